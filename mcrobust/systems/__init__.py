"""LightningModules ("systems") that compose the pure-torch core: endpoints, attacks, curves."""

from mcrobust.systems.adversarial import AdversarialSystem
from mcrobust.systems.base import ClassificationSystem
from mcrobust.systems.curve import CurveSystem
from mcrobust.systems.endpoint import EndpointSystem
from mcrobust.systems.fine_pruning import FinePruningSystem
from mcrobust.systems.injection import InjectionSystem
from mcrobust.systems.noisy import NoisySystem

__all__ = [
    "AdversarialSystem",
    "ClassificationSystem",
    "CurveSystem",
    "EndpointSystem",
    "FinePruningSystem",
    "InjectionSystem",
    "NoisySystem",
]
