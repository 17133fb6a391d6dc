"""mcrobust: mode connectivity to repair tampered networks and to study adversarial robustness.

Zhao, Chen, Das, Natesan Ramamurthy, Lin, "Bridging Mode Connectivity in Loss Landscapes and Adversarial
Robustness", ICLR 2020. The pure-torch core (nets, curves, attacks, Hessians) never imports Lightning; the
systems and callbacks compose it.
"""

__version__ = "0.1.0"
