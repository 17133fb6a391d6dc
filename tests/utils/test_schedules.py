"""PaperSchedule against the paper's code (dnn-mode-connectivity's learning_rate_schedule, epochs counted from 1),
and the per-step OneCycleSchedule of super-fine-tuning against torch's cosine one-cycle formula."""

from __future__ import annotations

import math

import pytest
import torch

from mcrobust.utils.schedules import OneCycleSchedule, PaperSchedule, paper_lr_factor


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


def test_one_cycle_rises_smoothly_to_its_peak_then_anneals_per_step():
    """Each of 100 steps has its own lr: cosine up from peak/25 over 30 steps, cosine down to ~0 (torch's formula)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.05)
    scheduler = OneCycleSchedule(0.05)(optimizer, total_steps=100)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = 29  # pct_start * total - 1
    up = [0.002 + (0.05 - 0.002) * (1 - math.cos(math.pi * step / peak)) / 2 for step in range(peak + 1)]
    assert seen[: peak + 1] == pytest.approx(up, rel=1e-9)
    assert max(seen) == pytest.approx(0.05) and seen[-1] < 1e-6
    assert (
        max(b - a for a, b in zip(seen, seen[1:], strict=False)) < 0.004
    )  # no jump: the per-epoch cycle jumped 0.002 -> 0.05


def test_a_system_steps_the_one_cycle_every_batch():
    from mcrobust.nets import TinyNet
    from mcrobust.systems import EndpointSystem
    from mcrobust.testing import quiet_trainer

    system = EndpointSystem(TinyNet(num_classes=2), scheduler=OneCycleSchedule(0.05))
    x, y = torch.rand(40, 3, 8, 8), torch.randint(0, 2, (40,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(system, loader)
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.total_steps == 8
    assert config.scheduler.last_epoch == 8  # stepped once per batch


def test_one_cycle_needs_its_step_count():
    with pytest.raises(ValueError, match="total_steps"):
        OneCycleSchedule(0.05)(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05))
