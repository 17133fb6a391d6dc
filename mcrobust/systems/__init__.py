"""LightningModules ("systems") that compose the pure-torch core: endpoints, attacks, curves."""

from mcrobust.systems.adversarial import AdversarialSystem
from mcrobust.systems.classification import ClassificationSystem
from mcrobust.systems.curve import CurveSystem
from mcrobust.systems.endpoint import EndpointSystem
from mcrobust.systems.injection import InjectionSystem
from mcrobust.systems.noisy import NoisySystem
from mcrobust.systems.pruning import FinePruningSystem

__all__ = [
    "AdversarialSystem",
    "ClassificationSystem",
    "CurveSystem",
    "EndpointSystem",
    "FinePruningSystem",
    "InjectionSystem",
    "NoisySystem",
]
