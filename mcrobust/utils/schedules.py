"""Learning-rate schedules; `PaperSchedule` is the one of Garipov et al. 2018 and the paper's code."""

from __future__ import annotations

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR


def paper_lr_factor(progress: float) -> float:
    """Constant for the first half of training, linear decay to 1% by 90%, then 1%."""
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - (progress - 0.5) / 0.4 * 0.99
    return 0.01


class PaperSchedule(LambdaLR):
    """The paper's per-epoch schedule: lr constant, then linear decay to 1% of it.

    Epochs count from 1 as in dnn-mode-connectivity's `learning_rate_schedule(lr, epoch, total)`: the e-th epoch
    (LambdaLR's 0-based index e) trains with factor `paper_lr_factor((e + 1) / total_epochs)`, so with 10 epochs
    the factors are 1, 1, 1, 1, 1, 0.7525, 0.505, 0.2575, 0.01, 0.01.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        total_epochs: length of training; the systems fill it from `trainer.max_epochs` when left out.
    """

    def __init__(self, optimizer: Optimizer, total_epochs: int | None = None) -> None:
        self._total_epochs = total_epochs
        super().__init__(optimizer, self._factor)

    @property
    def total_epochs(self) -> int | None:
        """Length of training; setting it re-applies the current epoch's factor to the optimizer."""
        return self._total_epochs

    @total_epochs.setter
    def total_epochs(self, value: int | None) -> None:
        self._total_epochs = value
        # filled after construction (from trainer.max_epochs): the lr of the first epoch must follow it too
        factor = self._factor(self.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            if isinstance(group["lr"], Tensor):  # a tensor lr is updated in place, as LRScheduler.step does
                group["lr"].fill_(float(base_lr) * factor)
            else:
                group["lr"] = base_lr * factor
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]

    def _factor(self, epoch: int) -> float:
        if not self._total_epochs or self._total_epochs < 1:
            return 1.0
        return paper_lr_factor((epoch + 1) / self._total_epochs)


class OneCycleSchedule:
    """A one-cycle schedule stepped every batch (Smith 2018; super-fine-tuning, Sha et al. 2022): a cosine warm-up
    from peak_lr / 25 to `peak_lr` over the first `warmup` of the steps, then a cosine anneal to ~0.

    Stepped per batch because a per-epoch cycle over a few epochs jumps from the start to the peak in one step, which
    diverged on PreResNet-20 and WRN-16-1 (docs/results.md). The systems call it with the run's number of optimizer
    steps (`trainer.estimated_stepping_batches`).

    Args:
        peak_lr: the highest learning rate of the cycle.
        warmup: fraction of the steps spent rising to the peak.
    """

    interval = "step"

    def __init__(self, peak_lr: float, warmup: float = 0.3) -> None:
        if peak_lr <= 0 or not 0 < warmup < 1:
            raise ValueError(f"one-cycle needs peak_lr > 0 and 0 < warmup < 1, got {peak_lr} and {warmup}")
        self.peak_lr, self.warmup = peak_lr, warmup

    def __call__(self, optimizer: Optimizer, total_steps: int | None = None) -> OneCycleLR:
        if total_steps is None:
            raise ValueError("OneCycleSchedule needs total_steps (a system's scheduler gets the trainer's step count)")
        return OneCycleLR(optimizer, max_lr=self.peak_lr, total_steps=max(int(total_steps), 2), pct_start=self.warmup)
