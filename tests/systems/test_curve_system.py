"""CurveSystem on a tiny backdoored pair: training lowers the loss at t=0.5; checkpoints resume; export works."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mcrobust.batchnorm import recompute_bn
from mcrobust.callbacks import ExportPoint
from mcrobust.checkpoints import load_weights
from mcrobust.data.datamodules import PoisonSettings, RobustDataModule
from mcrobust.errors import ConfigError
from mcrobust.nets import TinyNet
from mcrobust.systems import CurveSystem
from mcrobust.systems.curve import step_t
from mcrobust.testing import quiet_trainer


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"num_sanity_val_steps": 0, "limit_val_batches": 0, **kwargs})


def datamodule() -> RobustDataModule:
    dm = RobustDataModule(batch_size=32, train_on="bonafide", bonafide_size=150, poison=PoisonSettings())
    dm.setup("fit")
    return dm


def bonafide_loss(system: CurveSystem, dm: RobustDataModule, t: float) -> float:
    point = system.curve.at(t)
    recompute_bn(point, dm.bn_dataloader())
    point.eval()
    x, y, _ = dm.bonafide_dataset("train").tensors()
    with torch.no_grad():
        return float(F.cross_entropy(point(x), y))


def curve_system(tiny_endpoints, **kwargs) -> CurveSystem:
    return CurveSystem(
        TinyNet(width=16),
        start=str(tiny_endpoints["a"]),
        end=str(tiny_endpoints["b"]),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9),
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained(tiny_endpoints, tmp_path_factory):
    pl.seed_everything(0)
    system = curve_system(tiny_endpoints)
    dm = datamodule()
    fit_trainer = trainer(tmp_path_factory.mktemp("curve"), max_epochs=1, limit_train_batches=0)
    fit_trainer.fit(system, dm)  # loads the endpoints only
    before = bonafide_loss(system, dm, 0.5)
    fit_trainer = trainer(tmp_path_factory.mktemp("curve"), max_epochs=30)
    fit_trainer.fit(system, dm)
    return system, dm, fit_trainer, before


def test_training_lowers_the_bonafide_loss_at_the_midpoint(trained):
    system, dm, _, before = trained
    after = bonafide_loss(system, dm, 0.5)
    assert after < 0.5 * before, (before, after)


def test_endpoints_stay_fixed_and_match_the_files(trained, tiny_endpoints):
    system, _, _, _ = trained
    expected = load_weights(tiny_endpoints["a"], template=system.curve.template)
    endpoint = system.curve.endpoint(0).state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(endpoint[name], value)


def test_checkpoint_resumes_without_the_endpoint_files(trained, tmp_path):
    system, dm, fit_trainer, _ = trained
    path = tmp_path / "curve.ckpt"
    fit_trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    restored = CurveSystem(TinyNet(width=16))  # no start/end given
    restored.load_state_dict(state["state_dict"])
    x = dm.eval_datasets()["clean"].tensors()[0][:16]
    system.eval(), restored.eval()
    for t in (0.0, 0.3, 1.0):
        torch.testing.assert_close(restored.curve(x, t), system.curve(x, t))


def test_export_point_reproduces_the_point(trained, tmp_path):
    system, dm, _, _ = trained
    callback = ExportPoint(t=0.4, dirpath=str(tmp_path))

    class Stub:
        datamodule, is_global_zero, log_dir, default_root_dir = dm, True, str(tmp_path), str(tmp_path)

    callback.export(Stub(), system, 0.4)  # type: ignore[arg-type]
    bare = TinyNet(width=16)
    bare.load_state_dict(torch.load(callback.paths["pt"], weights_only=True))
    from safetensors.torch import load_file

    bare_st = TinyNet(width=16)
    bare_st.load_state_dict(load_file(callback.paths["safetensors"]))
    point = system.curve.at(0.4)
    recompute_bn(point, dm.bn_dataloader())
    x = dm.eval_datasets()["clean"].tensors()[0][:32]
    for model in (point, bare, bare_st):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(bare(x), point(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bare_st(x), point(x), rtol=1e-5, atol=1e-5)


def test_a_new_path_needs_both_endpoints(tmp_path):
    system = CurveSystem(TinyNet(width=16))
    with pytest.raises(ConfigError, match="both endpoints"):
        trainer(tmp_path, max_epochs=1).fit(system, datamodule())


def test_step_t_is_a_pure_function_of_seed_step_and_rank():
    draws = [step_t(0, step, 0) for step in range(200)]
    assert all(0.0 <= t < 1.0 for t in draws) and 0.4 < sum(draws) / len(draws) < 0.6
    assert step_t(0, 5, 0) == step_t(0, 5, 0) and step_t(0, 5, 0) != step_t(0, 5, 1) != step_t(1, 5, 0)


def test_weight_decay_gradient_equals_the_explicit_penalty():
    from mcrobust.curves import CurveModel
    from mcrobust.systems.curve import with_weight_decay

    torch.manual_seed(0)
    curve = CurveModel(TinyNet(width=4), num_bends=3)
    curve.set_endpoints(TinyNet(width=4).state_dict(), TinyNet(width=4).state_dict())
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    grads = []
    for explicit in (True, False):
        curve.zero_grad()
        weights = curve.weights(0.3)
        if explicit:
            penalty = torch.stack([w.pow(2).sum() for w in weights.values()]).sum()
            loss = F.cross_entropy(curve.run(x, weights), y) + 0.5 * 0.01 * penalty
        else:
            loss = F.cross_entropy(curve.run(x, with_weight_decay(weights, 0.01)), y)
        loss.backward()
        grads.append([p.grad.clone() for p in curve.parameters() if p.requires_grad])
    for explicit, implicit in zip(*grads, strict=True):
        torch.testing.assert_close(implicit, explicit, rtol=1e-5, atol=1e-7)
