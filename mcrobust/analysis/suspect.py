"""A trigger-free backdoor scan of one model: how easily one small universal perturbation sends clean images to
each class (Neural Cleanse's idea, Wang et al. 2019, with an L2 budget in place of a mask).

A backdoor is a shortcut to its target class, so on a tampered model the targeted universal perturbation toward
that class succeeds far more often than toward the others. Along a repair path the model's suspect class stops
standing out where the backdoor goes (the CIFAR-10 grid of docs/results.md), so `mcrobust repair` can tell
which of the points its holdout accepts is clean without knowing the trigger (selections 'scan' and 'veto').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mcrobust.threats.universal import easiest_target
from mcrobust.utils.modes import eval_mode

__all__ = ["SuspectScan", "scan_classes"]


@dataclass(frozen=True)
class SuspectScan:
    """Per class, the success rate of its targeted universal perturbation on clean images of the other classes.

    Attributes:
        reach: one rate per class, in [0, 1].
    """

    reach: tuple[float, ...]

    @property
    def median_reach(self) -> float:
        """The reach of the median class (the typical one)."""
        return float(torch.tensor(self.reach).median())

    @property
    def suspect(self) -> int:
        """The class reached most easily."""
        return max(range(len(self.reach)), key=lambda c: (self.reach[c], -c))

    def stands_out(self, cls: int, ratio: float, min_reach: float, must_lead: bool = True) -> bool:
        """Whether `cls` is reached from over `min_reach` of the images and `ratio` times the median class's rate,
        and (with `must_lead`) leads the scan.

        A backdoor's target is reached from many clean images and far more often than a typical class; on a clean
        model some class always leads, by a little, and on a very robust one (median near 0) it leads from a few.
        Without `must_lead` a known suspect still counts while another class overtakes it: on the CIFAR-10 grid two
        points kept ASR 0.63 and 0.81 while another class led their scans (docs/results.md).
        """
        leads = self.suspect == cls or not must_lead
        return leads and self.reach[cls] > max(ratio * self.median_reach, min_reach)

    def as_row(self, cls: int) -> dict[str, float | int]:
        """The scan's columns for a path table: its suspect, the reach toward `cls`, and the median reach."""
        return {"scan_suspect": self.suspect, "scan_reach": self.reach[cls], "scan_median_reach": self.median_reach}


def scan_classes(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int) -> SuspectScan:
    """Scan `model` (pixels in [0,1] to logits) on clean images `x` with labels `y`: one targeted universal
    perturbation of L2 radius `eps` (pixel units) per class, `steps` normalised-gradient steps each, from zero.

    The model's mode, BN statistics and parameter gradients are left as they were.
    """
    if len(x) == 0:
        raise ValueError("a suspect scan needs at least one clean image")
    with torch.no_grad(), eval_mode(model):
        num_classes = int(model(x[:1]).shape[1])
    starts = torch.zeros(num_classes, *x.shape[1:], dtype=x.dtype, device=x.device)
    _, _, success = easiest_target(model, x, y, starts, eps, steps)
    return SuspectScan(tuple(float(rate) for rate in success))
