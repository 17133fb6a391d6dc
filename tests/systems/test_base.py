"""ClassificationSystem at fit start: a net handed over in eval mode still trains in train mode.

Lightning keeps the modes submodules arrive in; `model.eval()` is how most models are shared, and the grid's
fine-tuning of such a PreResNet-20 diverged in 7 steps with frozen BatchNorm statistics (docs/results.md).
"""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

import mcrobust
from mcrobust.data.datamodules import BonafideSettings, RobustDataModule
from mcrobust.data.sources import load_split
from mcrobust.nets import TinyNet
from mcrobust.systems import EndpointSystem
from mcrobust.systems.fine_pruning import FinePruningSystem
from mcrobust.systems.unlearning import UnlearningSystem
from mcrobust.testing import quiet_trainer


class ModeProbe(pl.Callback):
    """Records the names of the modules in eval mode at every training batch."""

    def __init__(self) -> None:
        self.in_eval: list[set[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.in_eval.append({name for name, module in pl_module.named_modules() if not module.training})


@pytest.mark.parametrize("system_class", [EndpointSystem, FinePruningSystem, UnlearningSystem])
def test_a_net_handed_over_in_eval_mode_trains_in_train_mode(system_class, tmp_path):
    net = TinyNet(width=8).eval()
    start = tmp_path / "start.pt"
    torch.save(net.state_dict(), start)
    statistics = {key: value.clone() for key, value in net.state_dict().items() if key.endswith("running_mean")}
    system = system_class(net, init_weights=str(start), optimizer=partial(torch.optim.SGD, lr=0.01))
    probe = ModeProbe()
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[probe], limit_val_batches=0, num_sanity_val_steps=0)
    data = RobustDataModule(batch_size=32, train_on="bonafide", bonafide=BonafideSettings(size=100))

    trainer.fit(system, data)

    assert probe.in_eval == [set(), set()]
    trained = system.net.state_dict()
    assert statistics and all(not torch.equal(trained[key], value) for key, value in statistics.items())


def test_a_one_model_repair_of_an_eval_mode_model_trains_its_second_end_in_train_mode(tmp_path):
    data = load_split("digits", "train")
    images = torch.from_numpy(data.images[:200]).permute(0, 3, 1, 2).float() / 255.0
    model = TinyNet(width=8).eval()
    settings = {"epochs": 1, "epoch_samples": 64, "batch_size": 32, "num_points": 3, "progress": False}

    mcrobust.repair(model, (images, torch.from_numpy(data.labels[:200]).long()), out=tmp_path, **settings)

    from mcrobust.io.checkpoints import load_weights

    tuned = load_weights(str(tmp_path / "steps" / "finetuned.safetensors"), template=model)
    bn_keys = [key for key in tuned if key.endswith("running_mean")]
    assert bn_keys and all(not torch.equal(tuned[key], model.state_dict()[key]) for key in bn_keys)
