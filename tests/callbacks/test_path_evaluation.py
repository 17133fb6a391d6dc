"""PathEvaluation end to end on a tiny backdoored pair: table, summary, figure, endpoints, resume, DDP."""

from __future__ import annotations

import json
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from scipy import stats

from mcrobust.analysis.evaluation import PointEvaluator
from mcrobust.callbacks import ExportPoint, PathEvaluation
from mcrobust.callbacks.path_evaluation import COLUMNS, run_title, t_grid
from mcrobust.data.datamodules import BonafideSettings, PoisonSettings, RobustDataModule
from mcrobust.errors import ConfigError
from mcrobust.io.tables import read_csv
from mcrobust.nets import TinyNet
from mcrobust.systems import CurveSystem, EndpointSystem
from mcrobust.testing import quiet_trainer
from mcrobust.threats.evasion import PGD

T_VALUES = [0.0, 0.25, 0.5, 0.75, 1.0]


def datamodule() -> RobustDataModule:
    bonafide = BonafideSettings(size=150, holdout_size=30)
    return RobustDataModule(
        batch_size=32, train_on="bonafide", bonafide=bonafide, eval_size=120, poison=PoisonSettings()
    )


def callback(tmp_path, **kwargs) -> PathEvaluation:
    settings = dict(
        t_values=T_VALUES,
        evaluator=PointEvaluator(attack=PGD(eps=4 / 255, alpha=1 / 255, steps=3), hessian_samples=8, hessian_iters=10),
        dirpath=str(tmp_path),
    )
    return PathEvaluation(**{**settings, **kwargs})


def make_trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, callbacks=callbacks, **kwargs)


@pytest.fixture(scope="module")
def path_ckpt(tiny_endpoints, tmp_path_factory):
    """A short path training between the backdoored endpoints, saved as a CurveSystem checkpoint."""
    pl.seed_everything(0)
    root = tmp_path_factory.mktemp("path")
    system = CurveSystem(
        TinyNet(width=16),
        start=str(tiny_endpoints["a"]),
        end=str(tiny_endpoints["b"]),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9),
    )
    trainer = make_trainer(root, [], max_epochs=15, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(system, datamodule())
    trainer.save_checkpoint(root / "path.ckpt")
    return root / "path.ckpt"


def load(path_ckpt) -> CurveSystem:
    system = CurveSystem(TinyNet(width=16))
    system.load_state_dict(torch.load(path_ckpt, weights_only=True)["state_dict"])
    return system


@pytest.fixture(scope="module")
def one_process(path_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep1")
    cb = callback(out)
    make_trainer(out, [cb]).test(load(path_ckpt), datamodule(), verbose=False)
    return out, cb


def test_table_has_one_row_per_t_and_the_agreed_columns(one_process):
    out, cb = one_process
    rows = read_csv(out / "path_metrics.csv")
    assert [row["t"] for row in rows] == T_VALUES
    header = (out / "path_metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:1] == ["t"] and set(COLUMNS) - {"injection_success", "injection_keep_acc"} <= set(header)
    assert all(0.0 <= row["clean_acc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0 for row in rows)
    assert rows[0]["asr"] >= 0.9 and rows[-1]["asr"] >= 0.9  # the tampered endpoints
    assert all(row["asr"] + row["ra"] <= 1.0 for row in rows)  # a triggered image's true class is never the target
    assert rows[0]["ra"] <= 0.1 and max(row["ra"] for row in rows) > 0.5  # RA recovers where the backdoor dies
    assert all(row["n_clean"] == 120 and row["n_triggered"] == 108 for row in rows)  # 12 images per class, 1 = target
    assert header[-2:] == ["n_clean", "n_triggered"]
    assert all(
        row["hessian_top_eig_q25"] <= row["hessian_top_eig_median"] <= row["hessian_top_eig_q75"] for row in rows
    )
    assert (out / "path_figure.png").stat().st_size > 1000


def test_endpoint_rows_equal_the_endpoints_own_test_metrics(one_process, tiny_endpoints, tmp_path):
    out, _ = one_process
    rows = read_csv(out / "path_metrics.csv")
    for row, name in ((rows[0], "a"), (rows[-1], "b")):
        system = EndpointSystem(TinyNet(width=16), init_weights=str(tiny_endpoints[name]))
        from mcrobust.io.checkpoints import load_weights

        system.net.load_state_dict(load_weights(tiny_endpoints[name], template=system.net))
        results = make_trainer(tmp_path, []).test(system, datamodule(), verbose=False)
        metrics = {k: v for result in results for k, v in result.items()}
        assert row["clean_acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
        assert row["asr"] == pytest.approx(metrics["test/asr"], abs=1e-6)
        assert row["ra"] == pytest.approx(metrics["test/ra"], abs=1e-6)
        assert row["clean_loss"] == pytest.approx(metrics["test/loss"], rel=1e-4)


def test_the_test_loop_measures_the_selected_point_that_export_writes(path_ckpt, tmp_path, capsys):
    """test/* (the results box, TensorBoard) describe the exported t, not the configured val_t."""
    system = load(path_ckpt)
    system.val_t = 0.9  # not on the grid, so never the selected t
    sweep, export = callback(tmp_path, evaluator=None), ExportPoint(dirpath=str(tmp_path))
    results = make_trainer(tmp_path, [sweep, export]).test(system, datamodule(), verbose=False)
    metrics = {key: value for result in results for key, value in result.items()}
    selected = sweep.summary["selected_t"]
    row = next(row for row in read_csv(tmp_path / "path_metrics.csv") if row["t"] == selected)
    assert 0 < selected < 1 and system.val_t == selected
    assert metrics["test/acc"] == pytest.approx(row["clean_acc"], abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(row["clean_loss"], rel=1e-4)
    assert metrics["test/asr"] == pytest.approx(row["asr"], abs=1e-6)
    assert metrics["test/ra"] == pytest.approx(row["ra"], abs=1e-6)
    assert (metrics["test/n_clean"], metrics["test/n_triggered"]) == (row["n_clean"], row["n_triggered"])
    assert json.loads(export.paths["config"].read_text())["t"] == selected
    out = capsys.readouterr().out
    assert f"test/* below measure the point at the selected t = {selected} (model.val_t was 0.9)" in out
    assert "Evaluation sets: DataLoader 0 = clean set (120 images), DataLoader 1 = triggered set (108 images)" in out


def test_the_figure_is_titled_with_the_run(tmp_path):
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="repair_digits_tiny", version="path_test")
    assert run_title(make_trainer(tmp_path, [], logger=logger), tmp_path) == "repair_digits_tiny/path_test"
    assert run_title(make_trainer(tmp_path, []), tmp_path / "sweep") == "sweep"  # no logger: the output folder


def test_summary_has_selection_correlations_and_barriers(one_process):
    out, cb = one_process
    summary = json.loads((out / "path_summary.json").read_text())
    rows = read_csv(out / "path_metrics.csv")
    expected = stats.pearsonr([r["robust_loss"] for r in rows], [r["hessian_top_eig"] for r in rows])[0]
    assert summary["pearson"] == pytest.approx(expected, rel=1e-9)
    assert 0.0 < summary["selected_t"] < 1.0 and summary["bn_data"] == "bonafide"
    assert "clean_acc" in summary["barriers"] and "rule" in summary
    assert summary["settings"]["bonafide_size"] == 150 and summary["settings"]["holdout_size"] == 30


def test_an_interrupted_sweep_resumes_from_the_last_finished_t(one_process, path_ckpt, tmp_path):
    out, _ = one_process
    full = (out / "path_metrics.csv").read_text().splitlines()
    expected = read_csv(out / "path_metrics.csv")
    for name in ("path_settings.json",):
        (tmp_path / name).write_text((out / name).read_text().replace(str(out), str(tmp_path)))
    (tmp_path / "path_metrics.csv").write_text("\n".join(full[:3]) + "\n")  # header + 2 finished points
    cb = callback(tmp_path)
    evaluated = []
    original = cb.evaluator.evaluate
    cb.evaluator.evaluate = lambda model, sets, *a, **k: evaluated.append(1) or original(model, sets, *a, **k)
    make_trainer(tmp_path, [cb]).test(load(path_ckpt), datamodule(), verbose=False)
    resumed = read_csv(tmp_path / "path_metrics.csv")
    assert resumed[:2] == expected[:2]  # read back, not recomputed
    for a, b in zip(expected, resumed, strict=True):
        assert b == pytest.approx(a, rel=1e-6)
    assert len(evaluated) == 3  # the 3 remaining points (the holdout has its own clean-only evaluator)


@pytest.mark.ddp
def test_two_processes_give_the_same_table_as_one(one_process, path_ckpt, tmp_path):
    out, _ = one_process
    trainer = make_trainer(tmp_path, [callback(tmp_path)], strategy="ddp_spawn", devices=2)
    trainer.test(load(path_ckpt), datamodule(), verbose=False)
    single, double = read_csv(out / "path_metrics.csv"), read_csv(tmp_path / "path_metrics.csv")
    assert len(single) == len(double)
    for a, b in zip(single, double, strict=True):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_grid_validation():
    assert t_grid(3, None) == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        t_grid(3, [0.5, 1.5])


class CountingPGD(PGD):
    """PGD that counts the images it attacks."""

    attacked = 0

    def __call__(self, model, x, y, index=None):
        CountingPGD.attacked += len(x)
        return super().__call__(model, x, y, index)


def test_holdout_is_measured_for_clean_accuracy_only(path_ckpt, tmp_path):
    """The paper's protocol: PGD and the Hessian run on the evaluation set, never on the held-out images."""
    CountingPGD.attacked = 0
    evaluation = callback(tmp_path, evaluator=PointEvaluator(attack=CountingPGD(eps=4 / 255, alpha=1 / 255, steps=1)))
    make_trainer(tmp_path, [evaluation]).test(CurveSystem(TinyNet(width=16)), datamodule(), ckpt_path=str(path_ckpt))
    assert all(row["holdout_acc"] is not None for row in evaluation.rows)
    assert CountingPGD.attacked == len(T_VALUES) * 120  # eval_size images per t, not one held-out image more
