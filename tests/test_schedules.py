"""PaperSchedule against the paper's code: dnn-mode-connectivity's learning_rate_schedule, epochs counted from 1."""

from __future__ import annotations

import pytest
import torch

from mcrobust.schedules import PaperSchedule, paper_lr_factor


def reference_lr(base_lr: float, epoch: int, total_epochs: int) -> float:
    """dnn-mode-connectivity train.py `learning_rate_schedule`, called for epoch = 1 .. total_epochs."""
    alpha = epoch / total_epochs
    if alpha <= 0.5:
        factor = 1.0
    elif alpha <= 0.9:
        factor = 1.0 - (alpha - 0.5) / 0.4 * 0.99
    else:
        factor = 0.01
    return factor * base_lr


def lrs_per_epoch(scheduler_of, total_epochs: int, base_lr: float = 0.1) -> list[float]:
    """The lr each training epoch sees, stepping a real SGD and the scheduler once per epoch as Lightning does."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=base_lr, momentum=0.9)
    scheduler = scheduler_of(optimizer)
    seen = []
    for _ in range(total_epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        weight.sum().backward()
        optimizer.step()
        scheduler.step()
    return seen


def test_ten_epochs_follow_the_paper_factors():
    seen = lrs_per_epoch(lambda optimizer: PaperSchedule(optimizer, total_epochs=10), 10, base_lr=0.1)
    expected = [1, 1, 1, 1, 1, 0.7525, 0.505, 0.2575, 0.01, 0.01]
    assert seen == pytest.approx([0.1 * factor for factor in expected], rel=1e-12)


@pytest.mark.parametrize("total_epochs", [1, 2, 3, 7, 20, 200])
def test_every_epoch_matches_the_reference_schedule(total_epochs):
    seen = lrs_per_epoch(lambda optimizer: PaperSchedule(optimizer, total_epochs=total_epochs), total_epochs)
    expected = [reference_lr(0.1, epoch, total_epochs) for epoch in range(1, total_epochs + 1)]
    assert seen == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("total_epochs", [1, 10])
def test_total_epochs_filled_after_construction_sets_the_first_epoch_too(total_epochs):
    def late(optimizer):
        scheduler = PaperSchedule(optimizer)  # as the systems build it, then fill it from trainer.max_epochs
        scheduler.total_epochs = total_epochs
        return scheduler

    seen = lrs_per_epoch(late, total_epochs)
    assert seen == pytest.approx([reference_lr(0.1, e, total_epochs) for e in range(1, total_epochs + 1)], rel=1e-12)


def test_without_a_length_the_lr_is_constant():
    assert lrs_per_epoch(PaperSchedule, 5) == pytest.approx([0.1] * 5)


def test_factor_breakpoints():
    assert [paper_lr_factor(a) for a in (0.0, 0.5, 0.7, 0.9, 0.95, 1.0)] == pytest.approx(
        [1.0, 1.0, 0.505, 0.01, 0.01, 0.01]
    )
