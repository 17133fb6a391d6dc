"""CurveSystem on a tiny backdoored pair: training lowers the loss at t=0.5; checkpoints resume; export works.

Also the protocol details: t draws follow seed_everything, and no optimizer weight decay stacks on the w(t) penalty.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import mcrobust.systems.curve as curve_module
from mcrobust.callbacks import ExportPoint
from mcrobust.commands.parts import composed_settings
from mcrobust.data.datamodules import BonafideSettings, PoisonSettings, RobustDataModule
from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import load_weights
from mcrobust.nets import TinyNet
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.systems import CurveSystem
from mcrobust.systems.curve import step_t, t_seed
from mcrobust.testing import quiet_trainer


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"num_sanity_val_steps": 0, "limit_val_batches": 0, **kwargs})


def datamodule() -> RobustDataModule:
    dm = RobustDataModule(
        batch_size=32, train_on="bonafide", bonafide=BonafideSettings(size=150), poison=PoisonSettings()
    )
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
    from mcrobust.paths.curves import CurveModel
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


def t_draws(tiny_endpoints, tmp_path, global_seed: int, seed: int | None = None, steps: int = 4) -> list[float]:
    """The t of each training step of a short fit after `pl.seed_everything(global_seed)`."""
    pl.seed_everything(global_seed)
    system = curve_system(tiny_endpoints, seed=seed)
    draws: list[float] = []
    original = curve_module.step_t
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(curve_module, "step_t", lambda *args: draws.append(original(*args)) or draws[-1])
        trainer(tmp_path, max_epochs=1, limit_train_batches=steps).fit(system, datamodule())
    assert len(draws) == steps
    return draws


def test_t_draws_follow_seed_everything_unless_a_seed_is_given(tiny_endpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test, whatever seed_everything sets
    three = t_draws(tiny_endpoints, tmp_path, global_seed=3)
    assert three == t_draws(tiny_endpoints, tmp_path, global_seed=3)
    assert three == [step_t(3, step, 0) for step in range(4)]
    assert three != t_draws(tiny_endpoints, tmp_path, global_seed=4)
    explicit = t_draws(tiny_endpoints, tmp_path, global_seed=3, seed=7)
    assert explicit == t_draws(tiny_endpoints, tmp_path, global_seed=4, seed=7) == [step_t(7, s, 0) for s in range(4)]


def test_t_seed_reads_the_global_seed(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert t_seed(None) == 0
    pl.seed_everything(11)
    assert t_seed(None) == 11 and t_seed(2) == 2


@pytest.mark.parametrize(
    ("optimizer_decay", "penalty", "refused"),
    [(5e-4, 1e-4, True), (0.0, 1e-4, False), (5e-4, 0.0, False)],
    ids=["both", "penalty-only", "optimizer-only"],
)
def test_optimizer_weight_decay_may_not_stack_on_the_penalty(optimizer_decay, penalty, refused):
    system = CurveSystem(
        TinyNet(width=4),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=optimizer_decay),
        weight_decay=penalty,
    )
    if refused:
        with pytest.raises(ConfigError, match=r"optimizer\.init_args\.weight_decay.*model\.init_args\.weight_decay"):
            system.configure_optimizers()
    else:
        assert system.configure_optimizers().param_groups[0]["weight_decay"] == optimizer_decay


def test_no_curve_config_sets_an_optimizer_weight_decay():
    configs = sorted((Path(__file__).parents[2] / "configs" / "experiments").glob("*.yaml"))
    composed = {path: composed_settings(path)["model"] for path in configs}  # each file with its parts merged
    curves = [path for path in configs if composed[path]["class_path"].endswith("CurveSystem")]
    assert curves
    for path in curves:
        model = composed[path]["init_args"]
        optimizer = model.get("optimizer") or {}
        assert not (optimizer.get("init_args") or {}).get("weight_decay"), path.name


def test_distillation_loss_is_the_tempered_kl_to_the_teachers_mean():
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    first, second = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    student = torch.randn(5, 4)
    temperature = 2.0
    target = (F.softmax(first(x) / temperature, 1) + F.softmax(second(x) / temperature, 1)) / 2
    q = F.log_softmax(student / temperature, 1)
    expected = (target * (target.log() - q)).sum(1).mean() * temperature**2  # KL(p || q), per image, averaged
    got = curve_module.distillation_loss(student, [first, second], x, temperature)
    torch.testing.assert_close(got, expected)
    # a student that reproduces the one teacher it learns from has nothing left to learn
    with torch.no_grad():
        assert curve_module.distillation_loss(first(x), [first], x, temperature) < 1e-6


def test_distilled_path_learns_from_the_endpoints_own_predictions(tiny_endpoints, tmp_path):
    pl.seed_everything(0)
    system = curve_system(tiny_endpoints, distill=1.0)
    dm = datamodule()
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(system, dm)
    assert len(system.teachers) == 2 and "train/distill" in fit.callback_metrics
    x = dm.bonafide_dataset("train").tensors()[0][:16]
    for which, teacher in enumerate(system.teachers):  # the endpoints with their own BN statistics, untrained
        assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
        torch.testing.assert_close(teacher(x), system.curve.endpoint(which).eval()(x))
    plain = curve_system(tiny_endpoints)  # the paper's objective builds no teachers
    trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(plain, dm)
    assert plain.teachers == []


@pytest.mark.parametrize(("distill", "temperature"), [(-1.0, 4.0), (float("nan"), 4.0), (1.0, 0.0)])
def test_a_bad_distillation_setting_is_refused(distill, temperature):
    with pytest.raises(ConfigError, match="model.distill"):
        CurveSystem(TinyNet(width=16), distill=distill, distill_temperature=temperature)
