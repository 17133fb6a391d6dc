"""The batched pipeline: the per-sample loader's batches, valid crops and flips, (seed, epoch)-pure, under Lightning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from mcrobust.data.batched import BatchedArrays, EpochBatchSampler, batched_loader
from mcrobust.data.datamodules import PoisonSettings, RobustDataModule
from mcrobust.data.samplers import EpochSampler, UnpaddedShardSampler
from mcrobust.data.transforms import ArrayDataset, cifar_augmentation
from mcrobust.errors import ConfigError
from mcrobust.nets import TinyNet
from mcrobust.systems import EndpointSystem
from mcrobust.testing import quiet_trainer
from mcrobust.threats.triggers import PatchTrigger


def arrays(count: int = 37, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images below 255 (a white patch never occurs by chance) and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8), rng.integers(0, 10, count)


def batches_of(loader: DataLoader, epoch: int) -> list[tuple[torch.Tensor, ...]]:
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    return [tuple(batch) for batch in loader]


def assert_same_batches(ours: list, reference: list) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize(("world", "epoch_samples"), [(1, None), (1, 100), (3, 50)], ids=["one-pass", "tiled", "ddp-3"])
def test_training_batches_equal_the_per_sample_loader_without_augmentation(world, epoch_samples):
    images, labels = arrays()
    dataset = ArrayDataset(images, labels, indices=np.arange(100, 137))
    for rank in range(world):
        sampler = EpochSampler(dataset, epoch_samples, world, rank, seed=5)
        reference = DataLoader(dataset, batch_size=8, sampler=sampler)
        ours = batched_loader(
            dataset, 8, shuffle=True, epoch_samples=epoch_samples, num_replicas=world, rank=rank, seed=5
        )
        for epoch in (0, 3):
            assert_same_batches(batches_of(ours, epoch), batches_of(reference, epoch))


@pytest.mark.parametrize("world", [1, 2])
def test_evaluation_batches_equal_the_per_sample_loader_with_true_labels(world):
    images, labels = arrays()
    dataset = ArrayDataset(images, labels, indices=np.arange(37)[::-1].copy(), true_labels=(labels + 1) % 10)
    for rank in range(world):
        reference = DataLoader(dataset, batch_size=10, sampler=UnpaddedShardSampler(dataset, world, rank))
        ours = batched_loader(dataset, 10, num_replicas=world, rank=rank)
        assert_same_batches([tuple(b) for b in ours], [tuple(b) for b in reference])
        assert len(ours) == len(reference)


def crop_parameters(source: torch.Tensor, crop: torch.Tensor, padding: int = 4) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) whose slice of the zero-padded source equals `crop` (torch padding + slicing)."""
    padded = F.pad(source, (padding,) * 4)
    height, width = crop.shape[-2:]
    found = []
    for top in range(padded.shape[-2] - height + 1):
        for left in range(padded.shape[-1] - width + 1):
            window = padded[:, top : top + height, left : left + width]
            found += [
                (top, left, flipped)
                for flipped in (False, True)
                if torch.equal(crop, window.flip(2) if flipped else window)
            ]
    return found


def test_every_augmented_image_is_one_valid_padded_crop_with_a_per_sample_flip():
    images, labels = arrays(count=64)
    dataset = ArrayDataset(images, labels, cifar_augmentation(8))
    loader = batched_loader(dataset, 64, shuffle=True, seed=1)
    x, _, index = next(iter(loader))
    draws = loader.sampler.epoch_draws()  # type: ignore[union-attr]
    sources = dataset.images.float() / 255.0
    params = []
    for i in range(len(x)):
        found = crop_parameters(sources[index[i]], x[i])
        assert len(found) == 1, f"sample {i}: {found}"  # random pixels: exactly one window matches
        params.append(found[0])
    expected = [(int(u[0] * 9), int(u[1] * 9), bool(u[2] < 0.5)) for u in draws[: len(x)].tolist()]
    assert params == expected
    flips = [flipped for _, _, flipped in params]
    assert 0 < sum(flips) < len(flips)  # per sample, not per batch
    assert len({(top, left) for top, left, _ in params}) > 20 and {0, 8} <= {top for top, _, _ in params}


def test_augmentation_is_a_pure_function_of_seed_and_epoch():
    images, labels = arrays()
    dataset = ArrayDataset(images, labels, cifar_augmentation(8))

    def run(seed: int, epoch: int) -> list:
        return batches_of(batched_loader(dataset, 16, shuffle=True, epoch_samples=80, seed=seed), epoch)

    torch.manual_seed(123)  # the global RNG plays no part
    first = run(0, 2)
    torch.manual_seed(456)
    assert_same_batches(run(0, 2), first)
    assert not torch.equal(run(0, 3)[0][0], first[0][0])
    assert not torch.equal(run(1, 2)[0][0], first[0][0])


def test_ranks_draw_the_single_process_augmentation_of_their_positions():
    images, labels = arrays()
    dataset = ArrayDataset(images, labels, cifar_augmentation(8))
    whole = EpochBatchSampler(dataset, 4, 60, draws=3, seed=2)
    whole.set_epoch(1)
    table = whole.epoch_draws()
    for rank in range(3):
        shard = EpochBatchSampler(dataset, 4, 60, num_replicas=3, rank=rank, draws=3, seed=2)
        shard.set_epoch(1)
        plans = list(shard)
        assert torch.equal(torch.cat([p.indices for p in plans]), whole.global_order()[rank::3])
        assert torch.equal(torch.cat([p.draws for p in plans]), table[rank::3])  # type: ignore[misc]


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_late_trigger_lands_on_exactly_the_listed_rows(augment):
    images, labels = arrays(count=40)
    listed = np.array([0, 3, 4, 17, 39])
    trigger = PatchTrigger(size=2)
    transform = cifar_augmentation(8) if augment else None
    dataset = ArrayDataset(images, labels, transform, trigger.apply_tensor, listed)
    plain = BatchedArrays(ArrayDataset(images, labels, transform))
    loader = batched_loader(dataset, 40, shuffle=True, seed=3)
    plan = next(iter(loader.sampler))  # type: ignore[call-overload]
    x, index = loader.dataset[plan][0], plan.indices
    untouched = plain[plan][0]
    patch = x[:, :, 5:7, 5:7]
    stamped = (patch == 1.0).flatten(1).all(1)
    assert stamped.tolist() == np.isin(index.numpy(), listed).tolist()
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[:, :, 5:7, 5:7] = False
    assert torch.equal(x[outside], untouched[outside])  # the trigger changes the patch only
    assert torch.equal(x[~stamped], untouched[~stamped])
    if not augment:
        assert torch.equal(x, torch.stack([dataset[int(i)][0] for i in index]))


def test_the_data_module_serves_batched_and_per_sample_batches_alike():
    settings = PoisonSettings(rate=0.3, after_augmentation=True)
    modules = [
        RobustDataModule(batch_size=32, epoch_samples=200, poison=settings, pipeline=p) for p in ("batched", "loader")
    ]
    for module in modules:
        module.setup("fit")
    batched, loader = modules
    assert isinstance(batched.train_dataloader().dataset, BatchedArrays)
    assert_same_batches(batches_of(batched.train_dataloader(), 1), batches_of(loader.train_dataloader(), 1))
    for ours, reference in zip(batched.val_dataloader(), loader.val_dataloader(), strict=True):
        assert_same_batches([tuple(b) for b in ours], [tuple(b) for b in reference])
    assert_same_batches(
        [tuple(b) for b in batched.bn_dataloader("train")], [tuple(b) for b in loader.bn_dataloader("train")]
    )
    with pytest.raises(ConfigError, match="data.pipeline"):
        RobustDataModule(pipeline="fast")  # type: ignore[arg-type]


class RecordBatches(Callback):
    """Writes the dataset indices, devices and the sampler's epoch of every training batch to a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        epoch = trainer.train_dataloader.sampler.epoch
        self.seen.append({"epoch": epoch, "index": batch[2].tolist(), "device": str(batch[0].device)})

    def on_train_end(self, trainer, pl_module) -> None:
        Path(f"{self.path}.{trainer.global_rank}").write_text(json.dumps(self.seen))


def fit_tiny(tmp_path: Path, **trainer_args) -> RobustDataModule:
    datamodule = RobustDataModule(batch_size=16, epoch_samples=96, augment=True, eval_size=40)
    system = EndpointSystem(TinyNet(width=4), optimizer=torch.optim.SGD)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[RecordBatches(tmp_path / "seen")], **trainer_args)
    trainer.fit(system, datamodule=datamodule)
    return datamodule


def expected_orders(datamodule: RobustDataModule, world: int) -> list[list[int]]:
    dataset = datamodule.train_dataset()
    orders = []
    for epoch in (0, 1):
        sampler = EpochSampler(dataset, datamodule.epoch_samples, world, 0, int(os.environ.get("PL_GLOBAL_SEED", 0)))
        sampler.set_epoch(epoch)
        orders.append(sampler.global_order()[: datamodule.epoch_samples].tolist())
    return orders


def test_a_lightning_fit_runs_on_it_and_lightning_sets_the_epoch(tmp_path):
    datamodule = fit_tiny(tmp_path)
    seen = json.loads((tmp_path / "seen.0").read_text())
    assert [s["epoch"] for s in seen] == [0] * 6 + [1] * 6 and {s["device"] for s in seen} == {"cpu"}
    for epoch, order in enumerate(expected_orders(datamodule, 1)):
        assert sum((s["index"] for s in seen if s["epoch"] == epoch), []) == order


@pytest.mark.slow  # 15-40 s: two spawned processes import the stack
def test_two_ddp_processes_read_disjoint_shards_of_the_one_process_order(tmp_path):
    datamodule = fit_tiny(tmp_path, strategy="ddp_spawn", devices=2, limit_val_batches=0)
    datamodule.setup("fit")  # the fit ran in the spawned processes
    runs = [json.loads((tmp_path / f"seen.{rank}").read_text()) for rank in (0, 1)]
    for epoch, order in enumerate(expected_orders(datamodule, 2)):
        shards = [sum((s["index"] for s in run if s["epoch"] == epoch), []) for run in runs]
        assert shards == [order[0::2], order[1::2]]  # Lightning kept our sampler: no DistributedSampler swap


def test_a_resumed_fit_trains_on_the_batches_of_an_uninterrupted_one(tmp_path):
    """Lightning creates a resumed loader's iterator before set_epoch: the order must be drawn at the first batch."""

    def fit(root: Path, epochs: int, ckpt_path: str | None = None) -> tuple[EndpointSystem, list]:
        datamodule = RobustDataModule(batch_size=16, epoch_samples=48, augment=True, eval_size=40)
        record = RecordBatches(root / "seen")
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_on_train_epoch_end=True)
        trainer = quiet_trainer(
            root, max_epochs=epochs, callbacks=[record, checkpoint], enable_checkpointing=True, limit_val_batches=0
        )
        torch.manual_seed(0)
        system = EndpointSystem(TinyNet(width=4), optimizer=torch.optim.SGD)
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
        return system, record.seen

    reference, seen = fit(tmp_path / "reference", 3)
    fit(tmp_path / "resumed", 2)
    resumed, seen_after = fit(tmp_path / "resumed", 3, str(tmp_path / "resumed" / "last.ckpt"))
    assert seen_after == [s for s in seen if s["epoch"] == 2] and len(seen_after) == 3
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
