"""What an attacker does to a model: backdoor triggers and poisoning, weight error injection, evasion (PGD)."""

from mcrobust.threats.backdoor import PoisonedArrays, attack_success_rate, poison, poison_indices, triggered_eval_set
from mcrobust.threats.evasion import PGD, AutoAttack
from mcrobust.threats.triggers import BlendTrigger, MaskedTrigger, PatchTrigger, Trigger

__all__ = [
    "AutoAttack",
    "BlendTrigger",
    "MaskedTrigger",
    "PGD",
    "PatchTrigger",
    "PoisonedArrays",
    "Trigger",
    "attack_success_rate",
    "poison",
    "poison_indices",
    "triggered_eval_set",
]
