"""mcrobust: mode connectivity to repair tampered networks and to study adversarial robustness.

Zhao, Chen, Das, Natesan Ramamurthy, Lin, "Bridging Mode Connectivity in Loss Landscapes and Adversarial
Robustness", ICLR 2020. The pure-torch core re-exported here never imports Lightning; the systems
(`mcrobust.systems`), callbacks (`mcrobust.callbacks`) and the data module (`mcrobust.data.datamodules`) compose it.
"""

from mcrobust.attacks import PGD, AutoAttack
from mcrobust.batchnorm import recompute_bn
from mcrobust.checkpoints import load_weights, save_weights
from mcrobust.curves import CurveModel, bezier, polychain
from mcrobust.errors import CheckpointError, ConfigError, DataError, MCRobustError
from mcrobust.evaluation import PointEvaluator
from mcrobust.hessian import input_hessian_top_eigenvalue, input_hessian_top_eigenvalues
from mcrobust.nets import create_net, list_nets

__version__ = "0.1.0"

__all__ = [
    "PGD",
    "AutoAttack",
    "CheckpointError",
    "ConfigError",
    "CurveModel",
    "DataError",
    "MCRobustError",
    "PointEvaluator",
    "bezier",
    "create_net",
    "input_hessian_top_eigenvalue",
    "input_hessian_top_eigenvalues",
    "list_nets",
    "load_weights",
    "polychain",
    "recompute_bn",
    "save_weights",
]
