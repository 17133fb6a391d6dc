"""Learning-rate schedules; `PaperSchedule` is the one of Garipov et al. 2018 and the paper's code."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def paper_lr_factor(progress: float) -> float:
    """Constant for the first half of training, linear decay to 1% by 90%, then 1%."""
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - (progress - 0.5) / 0.4 * 0.99
    return 0.01


class PaperSchedule(LambdaLR):
    """The paper's per-epoch schedule: lr constant, then linear decay to 1% of it.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        total_epochs: length of training; the systems fill it from `trainer.max_epochs` when left out.
    """

    def __init__(self, optimizer: Optimizer, total_epochs: int | None = None) -> None:
        self.total_epochs = total_epochs
        super().__init__(optimizer, self._factor)

    def _factor(self, epoch: int) -> float:
        if not self.total_epochs:
            return 1.0
        return paper_lr_factor(epoch / self.total_epochs)
