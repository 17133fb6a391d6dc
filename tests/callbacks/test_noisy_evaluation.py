"""NoisyEvaluation on the tiny backdoored pair: its rows are the draws evaluated directly, its keys their spread."""

from __future__ import annotations

import statistics

import pytest
import torch

from mcrobust.analysis.evaluation import PointEvaluator
from mcrobust.callbacks import NoisyEvaluation
from mcrobust.callbacks.noisy_evaluation import DRAWS_FILE, summarize_draws
from mcrobust.data.datamodules import BonafideSettings, PoisonSettings, RobustDataModule
from mcrobust.defenses.noisy import draw_generator, noisy_weights
from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import load_weights
from mcrobust.io.tables import read_csv
from mcrobust.nets import TinyNet
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.systems import EndpointSystem, NoisySystem
from mcrobust.testing import quiet_trainer
from mcrobust.threats.evasion import PGD

ATTACK = PGD(eps=16 / 255, alpha=8 / 255, steps=1)


def datamodule() -> RobustDataModule:
    return RobustDataModule(
        batch_size=32, train_on="bonafide", bonafide=BonafideSettings(size=150), eval_size=200, poison=PoisonSettings()
    )


def noisy_system(tiny_endpoints, **kwargs) -> NoisySystem:
    return NoisySystem(TinyNet(width=16), start=str(tiny_endpoints["a"]), end=str(tiny_endpoints["b"]), **kwargs)


def trainer(tmp_path, evaluation: NoisyEvaluation):
    return quiet_trainer(tmp_path, callbacks=[evaluation], num_sanity_val_steps=0)


@pytest.fixture(scope="module")
def evaluated(tiny_endpoints, tmp_path_factory):
    """Two draws (seed 3, scale 0.5) evaluated under `trainer.test`, with a one-step PGD."""
    folder = tmp_path_factory.mktemp("noisy_evaluation")
    evaluation = NoisyEvaluation()
    system = noisy_system(tiny_endpoints, num_draws=2, seed=3, scale=0.5, eval_attack=ATTACK)
    results = trainer(folder, evaluation).test(system, datamodule())[0]
    return evaluation, results, folder


def directly_evaluated_draw(tiny_endpoints, draw: int, data: RobustDataModule) -> dict[str, float]:
    """Draw `draw` built from the endpoint files, its BN recomputed, measured by PointEvaluator outside Lightning."""
    net = TinyNet(width=16)
    start, end = (load_weights(tiny_endpoints[name], template=net) for name in ("a", "b"))
    names = {name for name, _ in net.named_parameters()}
    net.load_state_dict(noisy_weights(start, end, scale=0.5, generator=draw_generator(3, draw), parameters=names))
    recompute_bn(net, data.bn_dataloader())
    sets = {name: data.eval_dataloader(dataset) for name, dataset in data.eval_datasets().items()}
    return PointEvaluator(attack=ATTACK).evaluate(net, sets)


def test_csv_rows_are_the_draws_evaluated_directly(evaluated, tiny_endpoints):
    evaluation, _, folder = evaluated
    rows = read_csv(folder / DRAWS_FILE)
    assert [row["draw"] for row in rows] == [0.0, 1.0]
    data = datamodule()
    data.setup("test")
    for row in rows:
        expected = directly_evaluated_draw(tiny_endpoints, int(row["draw"]), data)
        assert list(row) == ["draw", *expected]
        assert {k: v for k, v in row.items() if k != "draw"} == pytest.approx(expected, abs=1e-6)
    assert [row["clean_loss"] for row in rows] == pytest.approx([row["clean_loss"] for row in evaluation.rows])


def test_logged_keys_are_the_mean_and_sample_std_of_the_csv_columns(evaluated):
    _, results, folder = evaluated
    rows = read_csv(folder / DRAWS_FILE)
    renamed = {"clean_acc": "acc", "clean_loss": "loss"}
    expected = {"test/num_draws": 2.0}
    for column in [name for name in rows[0] if name != "draw"]:
        values = [row[column] for row in rows]
        key = f"test/{renamed.get(column, column)}"
        expected[key], expected[f"{key}_std"] = statistics.mean(values), statistics.stdev(values)
    assert {"test/acc", "test/asr", "test/robust_acc", "test/robust_loss_std"} <= set(expected)
    assert results == pytest.approx(expected, abs=1e-6)


def test_validate_logs_val_keys_and_a_single_draw_has_no_spread(tiny_endpoints, tmp_path):
    evaluation = NoisyEvaluation()
    results = trainer(tmp_path, evaluation).validate(noisy_system(tiny_endpoints, num_draws=1), datamodule())[0]
    assert results["val/num_draws"] == 1 and results["val/acc_std"] == 0 and results["val/asr_std"] == 0
    assert results["val/acc"] == pytest.approx(evaluation.rows[0]["clean_acc"], abs=1e-6)
    assert "test/acc" not in results


def test_summarize_draws_against_the_statistics_module():
    rows = [{"draw": 0, "clean_acc": 0.5, "asr": 0.1}, {"draw": 1, "clean_acc": 0.7, "asr": 0.4}]
    summary = summarize_draws(rows, "test")
    assert summary["test/acc"] == pytest.approx(0.6) and summary["test/asr"] == pytest.approx(0.25)
    assert summary["test/acc_std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert summary["test/asr_std"] == pytest.approx(statistics.stdev([0.1, 0.4]))
    assert summary["test/num_draws"] == 2
    assert summarize_draws(rows[:1], "val") == {
        "val/acc": 0.5,
        "val/acc_std": 0.0,
        "val/asr": 0.1,
        "val/asr_std": 0.0,
        "val/num_draws": 1.0,
    }


def test_draw_k_is_reproducible_and_has_the_midpoint_buffers(tiny_endpoints):
    system = noisy_system(tiny_endpoints, seed=3)
    first = system.draw(1)
    torch.testing.assert_close(system.draw(1), first, rtol=0, atol=0)
    assert not torch.equal(system.draw(0)["classifier.weight"], first["classifier.weight"])
    start, end = system.endpoints
    buffers = [name for name, _ in system.net.named_buffers() if first[name].is_floating_point()]
    assert buffers
    for name in buffers:
        torch.testing.assert_close(first[name], (start[name] + end[name]) / 2)


def test_refuses_a_system_that_is_not_the_noisy_baseline(tiny_endpoints, tmp_path):
    system = EndpointSystem(TinyNet(width=16), init_weights=str(tiny_endpoints["a"]))
    with pytest.raises(ConfigError, match="NoisySystem"):
        trainer(tmp_path, NoisyEvaluation()).test(system, datamodule())
