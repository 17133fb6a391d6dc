"""PointEvaluator: every column against a direct computation, batching/sharding invariance, modes, 2-process DDP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcrobust.analysis.evaluation import PointEvaluator
from mcrobust.analysis.hessian import input_hessian_top_eigenvalue, input_hessian_top_eigenvalues
from mcrobust.errors import ConfigError
from mcrobust.threats.evasion import PGD
from mcrobust.threats.injection import InjectionSets, injection_metrics

ROOT = Path(__file__).resolve().parents[2]
N, TRIGGERED, M = 37, 11, 6  # odd sizes: uneven DDP shards


class TinyConv(nn.Module):
    """Conv-BN-ReLU-pool-linear on 3x6x6 images: BN makes eval mode matter, ReLU gives a PSD input Hessian."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Linear(36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_model() -> TinyConv:
    torch.manual_seed(0)
    model = TinyConv()
    with torch.no_grad():  # BN statistics that differ from the train-mode batch statistics
        model.features[1].running_mean.uniform_(-0.2, 0.2)
        model.features[1].running_var.uniform_(0.5, 1.5)
        model.head.weight.mul_(8)  # confident, varied predictions: a spread of losses and eigenvalues
    return model.eval()


def make_data(true_labels: bool = True) -> dict[str, tuple[torch.Tensor, ...]]:
    """Clean (x, y, index) and triggered (x, target 1, index, true label in {0, 2}) tensors."""
    generator = torch.Generator().manual_seed(1)
    clean = (torch.rand(N, 3, 6, 6, generator=generator), torch.randint(0, 3, (N,), generator=generator))
    triggered_x = torch.rand(TRIGGERED, 3, 6, 6, generator=generator)
    true_y = 2 * torch.randint(0, 2, (TRIGGERED,), generator=generator)  # never the target class 1
    triggered = (triggered_x, torch.ones(TRIGGERED, dtype=torch.long), torch.arange(TRIGGERED) * 3)
    return {"clean": (*clean, torch.arange(N)), "triggered": (*triggered, true_y) if true_labels else triggered}


def batches(tensors: tuple[torch.Tensor, ...], size: int, order: torch.Tensor | None = None) -> list[tuple]:
    """(x, y, index[, true_label]) batches of the given size, optionally in a permuted order."""
    if order is not None:
        tensors = tuple(t[order] for t in tensors)
    return list(zip(*(t.split(size) for t in tensors), strict=True))


def loaders(data: dict, size: int, shard: tuple[int, int] = (0, 1)) -> dict[str, list[tuple]]:
    rank, world = shard
    return {name: batches(tuple(t[rank::world] for t in tensors), size) for name, tensors in data.items()}


def injection_sets(data: dict) -> InjectionSets:
    x, y, _ = data["clean"]
    return InjectionSets(
        target_index=torch.tensor([0, 1]),
        target_images=x[:2],
        target_labels=(y[:2] + 1) % 3,
        keep_index=torch.arange(2, 12),
        keep_images=x[2:12],
        keep_labels=y[2:12],
        target_true_labels=y[:2],
    )


def full_evaluator(top_k: int = 1) -> PointEvaluator:
    attack = PGD(eps=8 / 255, alpha=2 / 255, steps=3, seed=5)
    return PointEvaluator(attack=attack, hessian_samples=M, hessian_iters=30, hessian_tol=1e-4, hessian_top_k=top_k)


@pytest.fixture
def model_and_data():
    return make_model(), make_data()


def test_clean_columns_equal_a_direct_computation(model_and_data):
    model, data = model_and_data
    x, y, _ = data["clean"]
    row = PointEvaluator().evaluate(model, loaders({"clean": data["clean"]}, 8))
    with torch.no_grad():
        logits = model(x)
    assert set(row) == {"clean_acc", "clean_loss"}
    assert row["clean_acc"] == (logits.argmax(1) == y).sum().item() / N
    assert row["clean_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


class CountingForward(nn.Module):
    """Counts the forward passes of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def test_asr_and_ra_are_accuracies_on_the_triggered_set_from_one_forward_pass(model_and_data):
    model, data = model_and_data
    x, y, _, true_y = data["triggered"]
    counting = CountingForward(model)
    row = PointEvaluator().evaluate(counting, loaders(data, 4), counts=True)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert list(row) == ["clean_acc", "clean_loss", "asr", "ra", "n_clean", "n_triggered"]
    assert row["asr"] == (predicted == y).sum().item() / TRIGGERED
    assert row["ra"] == (predicted == true_y).sum().item() / TRIGGERED
    assert 0 < row["ra"] < 1 and row["asr"] + row["ra"] <= 1  # a true label is never the target
    assert (row["n_clean"], row["n_triggered"]) == (N, TRIGGERED)
    assert counting.calls == -(-N // 4) + -(-TRIGGERED // 4)  # one forward per batch: ra costs no extra pass


def test_triggered_batches_without_true_labels_give_asr_only(model_and_data):
    model, _ = model_and_data
    row = PointEvaluator().evaluate(model, loaders(make_data(true_labels=False), 4))
    assert list(row) == ["clean_acc", "clean_loss", "asr"]


def test_triggered_batches_with_and_without_true_labels_are_refused(model_and_data):
    model, data = model_and_data
    mixed = loaders(data, 4)["triggered"]
    mixed[0] = mixed[0][:3]
    with pytest.raises(ConfigError, match="true labels"):
        PointEvaluator().evaluate(model, {"clean": loaders(data, 8)["clean"], "triggered": mixed})


def test_robust_columns_equal_calling_pgd_directly(model_and_data):
    model, data = model_and_data
    x, y, index = data["clean"]
    attack = PGD(eps=8 / 255, alpha=2 / 255, steps=3, seed=5)
    row = PointEvaluator(attack=attack).evaluate(model, loaders({"clean": data["clean"]}, 8))
    with torch.no_grad():
        adv_logits = model(attack(model, x, y, index))
    assert row["robust_acc"] == (adv_logits.argmax(1) == y).sum().item() / N
    assert row["robust_loss"] == pytest.approx(F.cross_entropy(adv_logits, y).item(), rel=1e-5)
    assert row["robust_loss"] > row["clean_loss"]


def test_hessian_columns_are_mean_and_std_over_the_first_samples_by_index(model_and_data):
    model, data = model_and_data
    x, y, index = data["clean"]
    evaluator = PointEvaluator(hessian_samples=M, hessian_iters=30, hessian_tol=1e-4, seed=3)
    shuffled = batches(data["clean"], 5, order=torch.randperm(N, generator=torch.Generator().manual_seed(2)))
    row = evaluator.evaluate(model, {"clean": shuffled})
    values = input_hessian_top_eigenvalue(model, x[:M], y[:M], iters=30, tol=1e-4, seed=3, index=index[:M])
    assert row["hessian_top_eig"] == pytest.approx(values.mean().item(), rel=1e-5)
    assert row["hessian_top_eig_std"] == pytest.approx(values.std().item(), rel=1e-4)
    assert row["hessian_top_eig"] > 0
    quartiles = np.quantile(values.double().numpy(), [0.25, 0.5, 0.75])
    measured = [row[f"hessian_top_eig_{name}"] for name in ("q25", "median", "q75")]
    assert measured == pytest.approx(quartiles.tolist(), rel=1e-5)
    assert 0 < measured[0] < measured[1] < measured[2]


def test_top_k_adds_the_mean_of_each_further_eigenvalue(model_and_data):
    model, data = model_and_data
    x, y, index = data["clean"]
    row = full_evaluator(top_k=2).evaluate(model, loaders({"clean": data["clean"]}, 7))
    values = input_hessian_top_eigenvalues(model, x[:M], y[:M], k=2, iters=30, tol=1e-4, index=index[:M])
    assert list(row)[-6:-4] == ["hessian_top_eig", "hessian_top_eig_std"] and list(row)[-1] == "hessian_eig_2"
    assert row["hessian_top_eig"] == pytest.approx(values[:, 0].mean().item(), rel=1e-5)
    assert row["hessian_eig_2"] == pytest.approx(values[:, 1].mean().item(), rel=1e-4)
    assert row["hessian_eig_2"] <= row["hessian_top_eig"]


def test_injection_columns_come_from_injection_metrics(model_and_data):
    model, data = model_and_data
    sets = injection_sets(data)
    row = PointEvaluator().evaluate(model, loaders({"clean": data["clean"]}, 8), injection_sets=sets)
    expected = injection_metrics(model, sets)
    assert row["injection_success"] == expected["success"]
    assert row["injection_keep_acc"] == expected["keep_acc"]


def test_batch_size_and_order_do_not_change_any_column(model_and_data):
    model, data = model_and_data
    evaluator, sets = full_evaluator(), injection_sets(data)
    small = evaluator.evaluate(model, loaders(data, 5), injection_sets=sets)
    large = evaluator.evaluate(model, loaders(data, 32), injection_sets=sets)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(4))
    shuffled = {"clean": batches(data["clean"], 9, order), "triggered": loaders(data, 3)["triggered"]}
    permuted = evaluator.evaluate(model, shuffled, injection_sets=sets)
    assert list(small) == evaluator.columns(["clean", "triggered"], injection=True, true_labels=True)
    assert len(small) == 13
    for name in small:
        assert large[name] == pytest.approx(small[name], rel=1e-5, abs=1e-9), name
        assert permuted[name] == pytest.approx(small[name], rel=1e-5, abs=1e-9), name


def test_works_inside_no_grad_and_inference_mode(model_and_data):
    model, data = model_and_data
    evaluator = full_evaluator()
    reference = evaluator.evaluate(model, loaders(data, 8))
    with torch.no_grad():
        without_grad = evaluator.evaluate(model, loaders(data, 8))
    with torch.inference_mode():
        inference = evaluator.evaluate(model, loaders(data, 8))
    assert without_grad == pytest.approx(reference, rel=1e-6)
    assert inference == pytest.approx(reference, rel=1e-6)


def test_model_modes_and_state_are_restored(model_and_data):
    model, data = model_and_data
    model.train()
    model.features[1].eval()  # a frozen BN inside a training model stays frozen
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    full_evaluator().evaluate(model, loaders(data, 8))
    assert model.training and model.head.training and not model.features[1].training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_pairs_without_indices_and_a_float64_model(model_and_data):
    model, data = model_and_data
    x, y, _ = data["clean"]
    row = PointEvaluator().evaluate(model.double(), {"clean": list(zip(x.split(10), y.split(10), strict=True))})
    with torch.no_grad():
        expected = F.cross_entropy(model(x.double()), y).item()
    assert row["clean_loss"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "sets"),
    [
        pytest.param({"hessian_samples": -1}, None, id="negative-samples"),
        pytest.param({"hessian_top_k": 0}, None, id="top-k-0"),
        pytest.param({"hessian_batch_size": 0}, None, id="batch-size-0"),
        pytest.param({"attack": 3}, None, id="attack-not-callable"),
        pytest.param({}, {"triggered": []}, id="no-clean-set"),
        pytest.param({}, {"clean": [], "poisoned": []}, id="unknown-set"),
    ],
)
def test_bad_settings_raise_config_errors(kwargs, sets):
    with pytest.raises(ConfigError):
        PointEvaluator(**kwargs).evaluate(make_model(), sets or {"clean": []})


# ------------------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        data = make_data()
        row = full_evaluator().evaluate(
            make_model(), loaders(data, 4, (rank, world)), injection_sets(data), counts=True
        )
        Path(folder, f"row{rank}.json").write_text(json.dumps(row))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_processes_give_the_single_process_numbers(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # the spawned workers import this module as tests.test_evaluation
    assert str(ROOT) in sys.path
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    data = make_data()
    single = full_evaluator().evaluate(make_model(), loaders(data, 4), injection_sets(data), counts=True)
    assert {"ra", "hessian_top_eig_median", "hessian_top_eig_q25", "hessian_top_eig_q75", "n_triggered"} <= set(single)
    for rank in range(2):
        row = json.loads(Path(tmp_path, f"row{rank}.json").read_text())
        assert list(row) == list(single)
        for name in single:
            assert row[name] == pytest.approx(single[name], rel=1e-5, abs=1e-9), (rank, name)
