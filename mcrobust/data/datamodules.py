"""`RobustDataModule`: one LightningDataModule for every system (endpoints, attacks, curves, baselines).

Flow: data set -> optional backdoor poisoning (to train tampered endpoints) -> optional bonafide subset (the
small clean set that repair and baselines may use) -> loaders. Evaluation sets are the clean split and, when a
trigger is configured, its triggered copy (non-target images labelled with the target).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mcrobust.data.batched import batched_loader, can_batch
from mcrobust.data.bonafide import save_indices, split_stratified
from mcrobust.data.poisoned import PoisonSettings, poisoned_dataset, triggered_dataset
from mcrobust.data.samplers import EpochSampler, UnpaddedShardSampler
from mcrobust.data.sources import ArraySplit, channel_statistics, load_split
from mcrobust.data.subsets import (
    BonafideSettings,
    Parts,
    Roles,
    check_disjoint_roles,
    draw_parts,
    read_parts,
    split_holdout,
    stratified_draw,
)
from mcrobust.data.transforms import ArrayDataset, cifar_augmentation
from mcrobust.errors import ConfigError

__all__ = ["BonafideSettings", "PoisonSettings", "RobustDataModule", "datamodule_of", "stack_dataset"]

AUGMENTED_BY_DEFAULT = ("cifar10", "image_folder")
BONAFIDE_FILE = "bonafide_indices.json"


class RobustDataModule(pl.LightningDataModule):
    """Data for every mcrobust system: training split, bonafide subset, clean and triggered evaluation sets.

    Args:
        dataset: 'digits' (embedded, no download), 'cifar10', 'svhn' or 'image_folder' (root/train, root/test).
        root: folder holding the data set files.
        download: fetch cifar10/svhn through torchvision when missing.
        image_size: resize image_folder images to this size (square).
        batch_size: training batch size (per process).
        eval_batch_size: evaluation batch size; defaults to 2 x batch_size.
        num_workers: data loader worker processes.
        pin_memory: pin host memory for faster GPU transfers.
        augment: crop+flip augmentation of training images; default on for cifar10 and image_folder.
        split_seed: seed of the digits train/test split and of the evaluation-set cap.
        train_on: 'full' trains on the (optionally poisoned) training split; 'bonafide' on the bonafide subset.
        bonafide: the bonafide subset (its size or fraction, seed, pool, indices_path, holdout_size); None: no
            subset, and the training split is the pool.
        eval_size: evaluate on a seeded, stratified subset of this many images (None: the whole evaluation set).
        poison: backdoor settings; poisons the training split when train_on is 'full' and adds the triggered set.
        epoch_samples: training samples per epoch, tiled from the training set (the paper's fixed epoch length:
            10000 on CIFAR-10, 26032 on SVHN), so every bonafide size gets the same number of steps; None: one pass.
        pipeline: 'batched' cuts each batch from the in-memory arrays in one op (training batches on the training
            device, crop+flip and a late trigger per batch, augmentation seeded by (seed, epoch)); 'loader' is the
            per-sample DataLoader (torchvision transforms, `num_workers` processes). Same order and, without
            augmentation, the same batches; `num_workers` and `pin_memory` apply to 'loader' (and pinning to
            batched evaluation batches) only.
    """

    def __init__(
        self,
        dataset: Literal["digits", "cifar10", "svhn", "image_folder"] = "digits",
        root: str = "data",
        download: bool = False,
        image_size: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool | None = None,
        split_seed: int = 0,
        train_on: Literal["full", "bonafide"] = "full",
        bonafide: BonafideSettings | None = None,
        eval_size: int | None = None,
        poison: PoisonSettings | None = None,
        epoch_samples: int | None = None,
        pipeline: Literal["batched", "loader"] = "batched",
        skip_unreadable: bool = False,
    ) -> None:
        super().__init__()
        sizes = {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "epoch_samples": epoch_samples}
        _refuse_bad_settings({**sizes, "eval_size": eval_size, "image_size": image_size}, num_workers, pipeline)
        self.bonafide = bonafide if bonafide is not None else BonafideSettings()
        if train_on == "bonafide" and not self.bonafide.picks_images:
            raise ConfigError(
                "data.train_on: bonafide needs data.bonafide.size, data.bonafide.fraction or data.bonafide.indices_path"
            )
        self.dataset, self.root, self.download, self.image_size = dataset, root, download, image_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or 2 * batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment = dataset in AUGMENTED_BY_DEFAULT if augment is None else augment
        self.split_seed, self.train_on, self.eval_size, self.poison = split_seed, train_on, eval_size, poison
        self.epoch_samples, self.pipeline, self.skip_unreadable = epoch_samples, pipeline, skip_unreadable
        self._train: ArraySplit | None = None
        self.pool: ArraySplit | None = None
        self.eval_split: ArraySplit | None = None
        self.bonafide_parts: Parts | None = None  # (train, holdout) positions in the pool
        # where each pool / evaluation image comes from: (split name, position in that split), to check roles
        self.pool_origin: tuple[str, np.ndarray] = ("train", np.zeros(0, dtype=np.int64))
        self.eval_origin: tuple[str, np.ndarray] = ("test", np.zeros(0, dtype=np.int64))
        self.given_splits: tuple[ArraySplit, ArraySplit] | None = None
        self._legacy_index: np.ndarray | None = None
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()

    # ----------------------------------------------------------------------------------------------- set-up
    def prepare_data(self) -> None:
        if self.download and self.dataset in ("cifar10", "svhn"):
            load_split(self.dataset, "train", self.root, download=True)
            load_split(self.dataset, "test", self.root, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.eval_split is not None:
            return
        train, test = self.given_splits or self._load_splits()
        self._train = train
        self._split_pool_and_evaluation(train, test)
        if self.poison is not None and not 0 <= self.poison.target < self.num_classes:
            raise ConfigError(f"data.poison.target {self.poison.target} is not a class (0..{self.num_classes - 1})")
        if self.bonafide_parts is None:
            self.bonafide_parts = self._find_bonafide_parts()
        check_disjoint_roles(self.roles())
        self.mean, self.std = channel_statistics(self._statistics_images())
        self._write_bonafide_indices()

    def _load_splits(self) -> tuple[ArraySplit, ArraySplit]:
        splits = [
            load_split(self.dataset, split, self.root, False, self.split_seed, self.image_size, self.skip_unreadable)
            for split in ("train", "test")
        ]
        return splits[0], splits[1]

    def _split_pool_and_evaluation(self, train: ArraySplit, test: ArraySplit) -> None:
        """The bonafide pool and the evaluation set, with where each image comes from (the roles check uses it)."""
        if self.bonafide.pool == "test_half":
            pool_idx, eval_idx = split_stratified(test.labels, len(test.labels) // 2, seed=self.split_seed)
            self.pool, evaluation = _take(test, pool_idx), _take(test, eval_idx)
            self.pool_origin, eval_positions = ("test", pool_idx), eval_idx
        else:
            self.pool, evaluation = train, test
            self.pool_origin, eval_positions = ("train", np.arange(len(train.labels))), np.arange(len(test.labels))
        if self.eval_size is not None and self.eval_size < len(evaluation.labels):
            keep = stratified_draw("data.eval_size", evaluation.labels, self.eval_size, self.split_seed)
            evaluation, eval_positions = _take(evaluation, keep), eval_positions[keep]
        self.eval_split, self.eval_origin = evaluation, ("test", eval_positions)

    def _find_bonafide_parts(self) -> Parts | None:
        """The bonafide (train, holdout) parts: an older checkpoint's index, the saved file, or a fresh draw."""
        assert self.pool is not None
        labels = self.pool.labels
        if self._legacy_index is not None:
            return split_holdout(self.bonafide, labels, self._legacy_index)
        if self.bonafide.indices_path:
            return read_parts(self.bonafide, labels, self.bonafide_metadata())
        return draw_parts(self.bonafide, labels, self.num_classes)

    def _statistics_images(self) -> np.ndarray:
        """Images whose mean/std a freshly trained net normalises with: only the data it trains on."""
        assert self._train is not None and self.pool is not None
        if self.train_on == "bonafide" and self.bonafide_parts is not None:
            return self.pool.images[self.bonafide_parts[0]]
        return self._train.images

    def bonafide_metadata(self) -> dict[str, Any]:
        """What defines the bonafide parts: written beside the indices and checked when they are read back."""
        assert self.pool is not None
        sizes = (0, 0) if self.bonafide_parts is None else tuple(len(p) for p in self.bonafide_parts)
        return {
            "dataset": self.dataset,
            "pool": self.bonafide.pool,
            "pool_size": len(self.pool.labels),
            "split_seed": self.split_seed,
            "bonafide_seed": self.bonafide.seed,
            "train_size": sizes[0],
            "holdout_size": sizes[1],
        }

    def roles(self) -> Roles:
        """Every image role of this run as (split, positions in that split); they must be pairwise disjoint."""
        split, origin = self.pool_origin
        roles = {"evaluation set": self.eval_origin}
        if self.bonafide_parts is not None:
            roles["bonafide train set"] = (split, origin[self.bonafide_parts[0]])
            roles["holdout set"] = (split, origin[self.bonafide_parts[1]])
        return roles

    def check_roles(self, extra: Roles | None = None) -> None:
        """Refuse a run in which an image plays two roles (e.g. an injection target that is also bonafide data)."""
        check_disjoint_roles({**self.roles(), **(extra or {})})

    def reserve_for_injection(self, roles: Roles) -> None:
        """Take an injection's target and keep images out of the clean evaluation set (each image one role).

        The injection draws them from the evaluation half; clean accuracy is then measured on the rest of it. Images
        that are bonafide data are refused (ConfigError naming both sets).
        """
        assert self.eval_split is not None
        split, origin = self.eval_origin
        taken = [index for role_split, index in roles.values() if role_split == split]
        keep = ~np.isin(origin, np.concatenate(taken)) if taken else np.ones(len(origin), dtype=bool)
        self.eval_split, self.eval_origin = _take(self.eval_split, np.flatnonzero(keep)), (split, origin[keep])
        self.check_roles(roles)

    def eval_origin_of(self, positions: np.ndarray) -> tuple[str, np.ndarray]:
        """(split, positions in it) of images given by their positions in the clean evaluation set."""
        split, origin = self.eval_origin
        return split, origin[np.asarray(positions, dtype=np.int64)]

    def _write_bonafide_indices(self) -> None:
        trainer = self.trainer
        if self.bonafide_parts is None or trainer is None:
            return
        log_dir = trainer.log_dir  # a collective call under DDP: every rank must ask
        if trainer.global_rank != 0 or not log_dir:
            return
        train, holdout = self.bonafide_parts
        meta = {**self.bonafide_metadata(), "train": train.tolist(), "holdout": holdout.tolist()}
        save_indices(Path(log_dir) / BONAFIDE_FILE, np.sort(np.concatenate(self.bonafide_parts)), meta)

    # ---------------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The bonafide indices travel in checkpoints, so a resumed run uses exactly the same subset."""
        if self.bonafide_parts is None:
            return {"bonafide_index": None}
        train, holdout = self.bonafide_parts
        index = np.sort(np.concatenate(self.bonafide_parts)).tolist()
        return {"bonafide_index": index, "bonafide_train": train.tolist(), "bonafide_holdout": holdout.tolist()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("bonafide_train") is not None:
            parts = (state_dict["bonafide_train"], state_dict["bonafide_holdout"])
            self.bonafide_parts = tuple(np.asarray(p, dtype=np.int64) for p in parts)  # type: ignore[assignment]
        elif state_dict.get("bonafide_index") is not None:  # a checkpoint of an older version: split it here
            self._legacy_index = np.asarray(state_dict["bonafide_index"], dtype=np.int64)
            if self.pool is not None:
                self.bonafide_parts = split_holdout(self.bonafide, self.pool.labels, self._legacy_index)

    @property
    def bonafide_index(self) -> np.ndarray | None:
        """Every bonafide image (train and holdout parts), as sorted positions in the pool; None without a subset."""
        return None if self.bonafide_parts is None else np.sort(np.concatenate(self.bonafide_parts))

    # ----------------------------------------------------------------------------------------- the subsets
    @property
    def num_classes(self) -> int:
        """Number of classes of the data set (10 for the built-in ones)."""
        split = self.eval_split or self._train
        return 10 if split is None else len(split.classes)

    def _bonafide_parts(self) -> Parts:
        """Bonafide pool positions split into (train, holdout)."""
        if self.bonafide_parts is None:
            raise ConfigError("no bonafide subset: set data.bonafide.size or data.bonafide.fraction")
        return self.bonafide_parts

    def bonafide_dataset(self, part: Literal["all", "train", "holdout"] = "train") -> ArrayDataset:
        """The clean bonafide images without augmentation (BN recompute, selection, fine-pruning statistics)."""
        assert self.pool is not None
        train_part, holdout_part = self._bonafide_parts()
        chosen = {"all": self.bonafide_index, "train": train_part, "holdout": holdout_part}[part]
        return ArrayDataset(self.pool.images[chosen], self.pool.labels[chosen], indices=chosen)

    def train_dataset(self) -> ArrayDataset:
        """Training images: the bonafide subset (clean) or the training split (poisoned when configured)."""
        assert self._train is not None and self.pool is not None
        transform = cifar_augmentation(self._train.images.shape[1]) if self.augment else None
        if self.train_on == "bonafide":
            chosen = self._bonafide_parts()[0]
            return ArrayDataset(self.pool.images[chosen], self.pool.labels[chosen], transform, indices=chosen)
        images, labels = self._train.images, self._train.labels
        if self.poison is None:
            return ArrayDataset(images, labels, transform)
        return poisoned_dataset(images, labels, self.poison, transform)

    def eval_datasets(self) -> dict[str, ArrayDataset]:
        """Evaluation sets by name: 'clean' and, with a trigger, 'triggered'."""
        assert self.eval_split is not None
        sets = {"clean": ArrayDataset(self.eval_split.images, self.eval_split.labels)}
        if self.poison is not None:
            sets["triggered"] = triggered_dataset(self.eval_split.images, self.eval_split.labels, self.poison)
        return sets

    # ---------------------------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, shard: bool = False) -> DataLoader:
        if self.pipeline == "batched" and can_batch(dataset):
            return self._batched_loader(dataset, batch_size, shuffle, shard)  # type: ignore[arg-type]
        sampler: DistributedSampler | None = None
        trainer = self.trainer
        if shard and trainer is not None and trainer.world_size > 1:
            sampler = UnpaddedShardSampler(dataset, trainer.world_size, trainer.global_rank)  # type: ignore[arg-type]
        elif shuffle:
            # epoch e's order is a pure function of (seed, e), so a resumed run sees the batches an uninterrupted one
            # would (Lightning calls set_epoch); every rank cuts its share of the same global order
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            sampler = EpochSampler(dataset, self.epoch_samples, world, rank, seed)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _batched_loader(self, dataset: ArrayDataset, batch_size: int, shuffle: bool, shard: bool) -> DataLoader:
        """The same order as the per-sample loader, each batch cut in one op (`mcrobust.data.batched`).

        Training batches are made on the training device; evaluation batches on the CPU, because callbacks and the
        repair chain also feed these loaders to models outside the trainer (Lightning moves them in its loops).
        """
        trainer = self.trainer if shuffle or shard else None  # unsharded evaluation: the whole set on every rank
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        device = trainer.strategy.root_device if trainer is not None and shuffle else torch.device("cpu")
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return batched_loader(
            dataset,
            batch_size,
            shuffle=shuffle,
            epoch_samples=self.epoch_samples,
            num_replicas=world,
            rank=rank,
            seed=seed,
            device=device,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size, shard=True) for d in self.eval_datasets().values()]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def eval_set_names(self) -> list[str]:
        """Names of the evaluation loaders, in the order of val_dataloader()/test_dataloader()."""
        return ["clean", "triggered"] if self.poison is not None else ["clean"]

    def bn_dataloader(self, source: Literal["bonafide", "train"] = "bonafide") -> DataLoader:
        """Images for BN recompute, no augmentation, the same full set on every rank.

        'bonafide' (the faithful limited-data choice) serves the bonafide training images; 'train' the whole clean
        training split, as the paper's code did (it breaks the limited-data threat model; say so in results).
        """
        if source == "train":
            assert self._train is not None
            return self._loader(ArrayDataset(self._train.images, self._train.labels), self.eval_batch_size)
        return self._loader(self.bonafide_dataset("train"), self.eval_batch_size)

    def eval_dataloader(self, dataset: Dataset) -> DataLoader:
        """A sharded (no padding) evaluation loader over any data set, for callbacks."""
        return self._loader(dataset, self.eval_batch_size, shard=True)


def _refuse_bad_settings(sizes: dict[str, int | None], num_workers: int, pipeline: str) -> None:
    """One-line ConfigErrors for sizes below 1, negative workers and an unknown pipeline."""
    for key, value in sizes.items():
        if value is not None and value < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {value}")
    if num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
    if pipeline not in ("batched", "loader"):
        raise ConfigError(f"data.pipeline must be 'batched' or 'loader', got {pipeline!r}")


def _take(split: ArraySplit, index: np.ndarray) -> ArraySplit:
    return ArraySplit(split.images[index], split.labels[index], split.classes)


def stack_dataset(dataset: ArrayDataset, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """Images, labels and indices of a whole (small) data set as tensors on `device`."""
    return tuple(t.to(device) for t in dataset.tensors())


def datamodule_of(trainer: Any) -> Any:
    """The trainer's data module, a `RobustDataModule` in mcrobust's runs, or None.

    Lightning sets the attribute dynamically, so type checkers cannot see it; systems and callbacks both read it
    through here.
    """
    return getattr(trainer, "datamodule", None)
