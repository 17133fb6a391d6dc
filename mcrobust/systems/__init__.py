"""LightningModules ("systems") that compose the pure-torch core: endpoints, attacks, curves."""

from mcrobust.systems.classification import ClassificationSystem
from mcrobust.systems.endpoint import EndpointSystem

__all__ = ["ClassificationSystem", "EndpointSystem"]
