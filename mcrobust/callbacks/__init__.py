"""Callbacks that measure and export points of a path."""

from mcrobust.callbacks.export_point import ExportPoint
from mcrobust.callbacks.noisy_evaluation import NoisyEvaluation
from mcrobust.callbacks.path_evaluation import PathEvaluation
from mcrobust.callbacks.speedups import Speedups

__all__ = ["ExportPoint", "NoisyEvaluation", "PathEvaluation", "Speedups"]
