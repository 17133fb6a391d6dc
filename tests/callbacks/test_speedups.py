"""Speedups: channels_last (and compile, slow) change the memory format, not the numbers or the state_dict keys."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from mcrobust.callbacks import Speedups
from mcrobust.data.datamodules import RobustDataModule
from mcrobust.nets import TinyNet
from mcrobust.systems import EndpointSystem
from mcrobust.testing import quiet_trainer


def fit(callbacks, tmp_path) -> EndpointSystem:
    pl.seed_everything(0)
    system = EndpointSystem(TinyNet(width=8), optimizer=partial(torch.optim.SGD, lr=0.05))
    # float64: torch's channels_last CPU BatchNorm rounds batch statistics worse in float32 (1e-4 off on some batches,
    # 1e-3 in the weights after 3 steps), which would hide or mimic a real change in the numbers
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        precision="64-true",
    )
    trainer.fit(system, RobustDataModule(batch_size=16))
    return system


def test_channels_last_trains_to_the_same_weights(tmp_path):
    plain = fit([], tmp_path)
    fast = fit([Speedups(channels_last=True)], tmp_path)
    conv = fast.net.features[1].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert set(fast.net.state_dict()) == set(plain.net.state_dict())
    for name, value in plain.net.state_dict().items():
        torch.testing.assert_close(fast.net.state_dict()[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_keeps_state_dict_keys(tmp_path):
    plain = fit([], tmp_path)
    compiled = fit([Speedups(compile=True)], tmp_path)
    assert set(compiled.net.state_dict()) == set(plain.net.state_dict())
