"""UnlearningSystem: the perturbations it trains against are universal, bounded and carried from step to step."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from mcrobust.data.datamodules import BonafideSettings, RobustDataModule
from mcrobust.errors import ConfigError
from mcrobust.nets import TinyNet
from mcrobust.systems.unlearning import UnlearningSystem
from mcrobust.testing import quiet_trainer


@pytest.mark.parametrize("suspect", [False, True])
def test_a_fit_trains_against_bounded_universal_perturbations(suspect, tmp_path):
    torch.manual_seed(0)
    net = TinyNet(width=8)
    start = tmp_path / "start.pt"
    torch.save(net.state_dict(), start)
    system = UnlearningSystem(
        net, partial(torch.optim.SGD, lr=0.05), init_weights=str(start), eps=2.0, steps=2, suspect=suspect
    )
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, num_sanity_val_steps=0)
    data = RobustDataModule(batch_size=32, train_on="bonafide", bonafide=BonafideSettings(size=100))

    trainer.fit(system, data)

    image = torch.zeros(3, 32, 32)  # a digit as the default data module serves it
    assert system.delta.shape == image.shape and 0 < float(system.delta.norm()) <= 2.0 + 1e-5
    logged = trainer.callback_metrics
    assert "train/untargeted_acc" in logged and ("train/targeted_acc" in logged) == suspect
    if suspect:
        assert system.class_deltas.shape == (10, *image.shape) and 0 <= system.suspect < 10
        assert float(system.class_deltas.flatten(1).norm(dim=1).max()) <= 2.0 + 1e-5
    trained = system.net.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in torch.load(start).items())


def test_the_radius_shrinks_linearly_to_eps_final_and_bounds_every_epoch(tmp_path):
    torch.manual_seed(0)
    system = UnlearningSystem(TinyNet(width=8), partial(torch.optim.SGD, lr=0.05), eps=3.0, eps_final=1.5, steps=2)
    trainer = quiet_trainer(tmp_path, max_epochs=4, limit_train_batches=1, limit_val_batches=0, num_sanity_val_steps=0)
    data = RobustDataModule(batch_size=32, train_on="bonafide", bonafide=BonafideSettings(size=64))

    trainer.fit(system, data)

    assert system.radii == pytest.approx([3.0, 2.5, 2.0, 1.5])
    assert 0 < float(system.delta.norm()) <= 1.5 + 1e-5  # the last epoch's perturbation is inside the last radius


@pytest.mark.parametrize("settings", [{"eps": 1.0, "steps": 0}, {"eps": 1.0, "steps": 1, "eps_final": 0.0}])
def test_impossible_settings_are_refused(settings):
    with pytest.raises(ConfigError, match="unlearn_eps > 0 and unlearn_steps >= 1"):
        UnlearningSystem(TinyNet(width=8), **settings)


def test_the_first_scan_leaves_a_batchnorm1d_head_alone():
    """The scan sizes its class perturbations from one image: in eval mode, so a BatchNorm1d head neither breaks
    (one value per channel in train mode) nor moves its running statistics."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    system = UnlearningSystem(net, eps=1.0, steps=1, suspect=True)
    system.log = lambda *args, **kwargs: None  # no trainer to log to
    net.train()
    before = net[2].running_mean.clone()
    system.scan(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert system.class_deltas.shape == (4, 3, 8, 8) and torch.equal(net[2].running_mean, before) and net.training
