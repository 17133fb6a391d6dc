"""Batches cut from in-memory uint8 arrays in one op each: gather, crop, flip and late trigger for the whole batch.

Every data set of mcrobust fits in memory (`ArrayDataset` holds uint8 N,C,H,W), so a training batch needs no
per-image Python: the arrays sit on the training device, and each batch is one gather of uint8 crops from the
zero-padded array (and its mirror image, for the flips), one float conversion and one `torch.where` for a
trigger stamped after augmentation. The order comes from the same samplers as the per-sample DataLoader (`EpochSampler`,
`UnpaddedShardSampler`, both `DistributedSampler`s, so Lightning keeps them and calls `set_epoch`); the random
numbers of each sample's crop and flip are a pure function of (seed, epoch, position in the epoch's global order),
so a resumed run, and a run on any number of processes, augments every sample as an uninterrupted one does.

The loader built here is a `DataLoader(batch_size=None)` whose sampler yields a `BatchPlan` per batch and whose
data set turns a plan into the batch, so everything that handles DataLoaders (Lightning, the evaluators) works.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mcrobust.data.samplers import EpochSampler, UnpaddedShardSampler
from mcrobust.data.transforms import ArrayDataset, CropFlip
from mcrobust.utils.seeding import Stream, generator_for

__all__ = ["BatchPlan", "BatchedArrays", "EpochBatchSampler", "ShardBatchSampler", "batched_loader", "can_batch"]

DRAWS = 3
"""Uniform numbers per augmented sample: crop row, crop column, flip."""


@dataclass(frozen=True)
class BatchPlan:
    """One batch to cut: positions in the data set and, for augmentation, DRAWS uniforms in [0, 1) per sample."""

    indices: Tensor  # (B,) int64
    draws: Tensor | None = None  # (B, DRAWS) float64


def _chunks(indices: Tensor, draws: Tensor | None, batch_size: int) -> Iterator[BatchPlan]:
    """Consecutive batches of `batch_size` (the last one shorter), as the DataLoader's default batching cuts them."""
    for start in range(0, len(indices), batch_size):
        part = slice(start, start + batch_size)
        yield BatchPlan(indices[part], None if draws is None else draws[part])


class EpochBatchSampler(EpochSampler):
    """`EpochSampler`'s samples of this rank, cut into batches, with each sample's augmentation draws.

    The batches are those a `DataLoader(batch_size=...)` over an `EpochSampler` with the same arguments makes. The
    draws of epoch e are one table over the epoch's global positions from a generator seeded by (seed, e): rank r
    takes rows r, r + W, ... like its samples.

    Args:
        dataset: the training set (only its length is used).
        batch_size: samples per batch (per process).
        epoch_samples: samples per epoch over all ranks; None: one pass.
        num_replicas: number of DDP processes.
        rank: this process's rank.
        seed: seed of the orders and of the draws.
        draws: uniforms per sample (0: none; DRAWS for crop + flip).
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        epoch_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        draws: int = 0,
    ) -> None:
        super().__init__(dataset, epoch_samples, num_replicas, rank, seed)
        self.batch_size, self.draws = batch_size, draws

    def epoch_draws(self) -> Tensor:
        """This epoch's (total_size, draws) table of uniforms, one row per position of the global order."""
        generator = generator_for(self.seed, Stream.AUGMENTATION, self.epoch)  # apart from the order's stream
        return torch.rand(self.total_size, self.draws, generator=generator, dtype=torch.float64)

    def __iter__(self) -> Iterator[BatchPlan]:  # type: ignore[override]
        # a generator: the order is drawn at the first batch, not at iter(), because a resuming Lightning creates
        # the loader's iterator before it calls set_epoch (as torch's BatchSampler, also lazy, lets it)
        positions = slice(self.rank, None, self.num_replicas)
        draws = self.epoch_draws()[positions] if self.draws else None
        yield from _chunks(self.global_order()[positions], draws, self.batch_size)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)


class ShardBatchSampler(UnpaddedShardSampler):
    """`UnpaddedShardSampler`'s items (r, r + W, ...) cut into batches, for evaluation (no augmentation).

    Args:
        dataset: the evaluation set (only its length is used).
        batch_size: samples per batch.
        num_replicas: number of DDP processes (1: the whole set in order).
        rank: this process's rank.
    """

    def __init__(self, dataset: Sized, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas, rank)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[BatchPlan]:  # type: ignore[override]
        indices = torch.arange(self.rank, self.total_size, self.num_replicas)
        yield from _chunks(indices, None, self.batch_size)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)


def can_batch(dataset: Any) -> bool:
    """Whether the batched pipeline reproduces this data set: an ArrayDataset without augmentation or with CropFlip."""
    return isinstance(dataset, ArrayDataset) and (dataset.transform is None or isinstance(dataset.transform, CropFlip))


class BatchedArrays:
    """An `ArrayDataset`'s tensors on `device`, indexed by a `BatchPlan`: the whole batch in a few tensor ops.

    Items are those of the per-sample `ArrayDataset`, stacked: `(x, y, index)` or `(x, y, index, true_label)`. A
    `CropFlip` transform becomes one gather of crops from the zero-padded uint8 array and its mirror image (a
    strided window view, indexed at each sample's offset: twice the padded array's memory, no per-batch copy); a
    late trigger is applied to the whole batch and kept on the listed rows (`torch.where`: no host
    synchronisation on a GPU).

    Args:
        source: the per-sample data set (uint8 images, labels, indices, late trigger, true labels).
        device: where the arrays live and the batches are made.
    """

    def __init__(self, source: ArrayDataset, device: torch.device | str = "cpu") -> None:
        if not can_batch(source):
            raise TypeError(f"cannot batch {type(source).__name__} with transform {source.transform!r}")
        self.device = torch.device(device)
        self.augmentation = source.transform if isinstance(source.transform, CropFlip) else None
        images = source.images.to(self.device)  # N,C,H,W uint8 (strides of the N,H,W,C array on the CPU)
        self.images = images.contiguous() if self.augmentation is None else images  # contiguous rows gather fast
        if self.augmentation is not None:
            pad = self.augmentation.padding
            padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
            padded = torch.cat([padded, padded.flip(3)])  # image n mirrored at n + N: a flip is a choice of rows
            height, width = self.augmentation.size
            # (2N, C, rows, cols, height, width): window (r, c) of image n is its crop at offset (r, c), no copy
            self.windows = padded.unfold(2, height, 1).unfold(3, width, 1)
        self.labels = source.labels.to(self.device)
        self.indices = source.indices.to(self.device)
        self.true_labels = None if source.true_labels is None else source.true_labels.to(self.device)
        self.late_trigger = source.late_trigger
        self.late = torch.as_tensor(source.late, device=self.device)

    @property
    def draws(self) -> int:
        """Uniforms each sample's augmentation consumes (0 without augmentation)."""
        return 0 if self.augmentation is None else DRAWS

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, plan: BatchPlan) -> tuple[Tensor, ...]:
        index = plan.indices.to(self.device, non_blocking=True)
        x = self.images[index] if self.augmentation is None else self._augmented(index, plan.draws)
        x = x.float().div_(255.0)
        if self.late_trigger is not None:
            x = torch.where(self.late[index].view(-1, 1, 1, 1), self.late_trigger(x), x)
        items = (x, self.labels[index], self.indices[index])
        return items if self.true_labels is None else (*items, self.true_labels[index])

    def _augmented(self, index: Tensor, draws: Tensor | None) -> Tensor:
        """uint8 crops (B, C, height, width) at the offsets the draws give, flipped where u < 1/2: one gather.

        The flip of the crop at column offset c is the crop at offset cols - 1 - c of the mirrored image, so crop
        and flip are one selection of pixels, on uint8 (a quarter of the float bytes), equal to the per-sample
        path's crop and flip of the float image.
        """
        if draws is None or draws.shape[1] < DRAWS:
            raise ValueError("an augmented batch needs DRAWS uniforms per sample (EpochBatchSampler(draws=3))")
        draws = draws.to(self.device, non_blocking=True)
        rows, cols = self.windows.shape[2], self.windows.shape[3]
        top = (draws[:, 0] * rows).long().clamp_(max=rows - 1)
        left = (draws[:, 1] * cols).long().clamp_(max=cols - 1)
        flip = draws[:, 2] < 0.5
        source = torch.where(flip, index + len(self), index)
        left = torch.where(flip, cols - 1 - left, left)
        return self.windows[source, :, top, left]  # indices split by a slice: batch dim first, (B, C, h, w)


def _as_is(batch: Any) -> Any:
    """The DataLoader's collate function: the data set already returns the whole batch."""
    return batch


def batched_loader(
    dataset: ArrayDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    epoch_samples: int | None = None,
    num_replicas: int = 1,
    rank: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of whole batches cut by `BatchedArrays` in the order of the per-sample pipeline's sampler.

    Args:
        dataset: the per-sample data set.
        batch_size: samples per batch (per process).
        shuffle: training order (`EpochSampler`, augmentation on); else evaluation order (`UnpaddedShardSampler`).
        epoch_samples: training samples per epoch over all ranks (None: one pass).
        num_replicas: number of DDP processes.
        rank: this process's rank.
        seed: seed of the training order and augmentation.
        device: where the arrays live and batches are made (the training device).
        pin_memory: pin CPU batches (ignored when `device` is not the CPU).
    """
    arrays = BatchedArrays(dataset, device)
    sampler: EpochBatchSampler | ShardBatchSampler
    if shuffle:
        sampler = EpochBatchSampler(dataset, batch_size, epoch_samples, num_replicas, rank, seed, arrays.draws)
    else:
        if arrays.draws:
            raise ValueError("an augmented data set needs the training order (shuffle=True) for its draws")
        sampler = ShardBatchSampler(dataset, batch_size, num_replicas, rank)
    pin = pin_memory and arrays.device.type == "cpu"
    return DataLoader(arrays, batch_size=None, sampler=sampler, collate_fn=_as_is, pin_memory=pin)  # type: ignore[arg-type]
