"""The path between two models and its points: curves in weight space, BN recompute, the choice of t, export."""

from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.paths.curves import CurveModel, bezier, polychain
from mcrobust.paths.selection import select_t

__all__ = ["CurveModel", "bezier", "polychain", "recompute_bn", "select_t"]
