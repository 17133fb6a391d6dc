"""mcrobust: mode connectivity to repair tampered networks and to study adversarial robustness.

Zhao, Chen, Das, Natesan Ramamurthy, Lin, "Bridging Mode Connectivity in Loss Landscapes and Adversarial
Robustness", ICLR 2020. The pure-torch core re-exported here never imports Lightning; the systems
(`mcrobust.systems`), callbacks (`mcrobust.callbacks`) and the data module (`mcrobust.data.datamodules`) compose it.
Re-exports load on first use, so `import mcrobust.<module>` pays only for what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "repair": "mcrobust.api",
    "evaluate": "mcrobust.api",
    "RepairResult": "mcrobust.api",
    "PGD": "mcrobust.threats.evasion",
    "AutoAttack": "mcrobust.threats.evasion",
    "recompute_bn": "mcrobust.paths.batchnorm",
    "load_weights": "mcrobust.io.checkpoints",
    "save_weights": "mcrobust.io.checkpoints",
    "CurveModel": "mcrobust.paths.curves",
    "bezier": "mcrobust.paths.curves",
    "polychain": "mcrobust.paths.curves",
    "MCRobustError": "mcrobust.errors",
    "ConfigError": "mcrobust.errors",
    "DataError": "mcrobust.errors",
    "CheckpointError": "mcrobust.errors",
    "PointEvaluator": "mcrobust.analysis.evaluation",
    "input_hessian_top_eigenvalue": "mcrobust.analysis.hessian",
    "input_hessian_top_eigenvalues": "mcrobust.analysis.hessian",
    "create_net": "mcrobust.nets",
    "list_nets": "mcrobust.nets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mcrobust' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
