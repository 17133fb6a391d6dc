"""mcrobust: mode connectivity to repair tampered networks and to study adversarial robustness.

Zhao, Chen, Das, Natesan Ramamurthy, Lin, "Bridging Mode Connectivity in Loss Landscapes and Adversarial
Robustness", ICLR 2020. The pure-torch core re-exported here never imports Lightning; the systems
(`mcrobust.systems`), callbacks (`mcrobust.callbacks`) and the data module (`mcrobust.data.datamodules`) compose it.
Re-exports load on first use, so `import mcrobust.<module>` pays only for what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "repair": "mcrobust.api",
    "evaluate": "mcrobust.api",
    "RepairResult": "mcrobust.api",
    "PGD": "mcrobust.attacks",
    "AutoAttack": "mcrobust.attacks",
    "recompute_bn": "mcrobust.batchnorm",
    "load_weights": "mcrobust.checkpoints",
    "save_weights": "mcrobust.checkpoints",
    "CurveModel": "mcrobust.curves",
    "bezier": "mcrobust.curves",
    "polychain": "mcrobust.curves",
    "MCRobustError": "mcrobust.errors",
    "ConfigError": "mcrobust.errors",
    "DataError": "mcrobust.errors",
    "CheckpointError": "mcrobust.errors",
    "PointEvaluator": "mcrobust.evaluation",
    "input_hessian_top_eigenvalue": "mcrobust.hessian",
    "input_hessian_top_eigenvalues": "mcrobust.hessian",
    "create_net": "mcrobust.nets",
    "list_nets": "mcrobust.nets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mcrobust' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
