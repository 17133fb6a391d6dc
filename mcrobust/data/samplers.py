"""Samplers: evaluation shards without the duplicate padding that biases metrics, and fixed-length epochs."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler

from mcrobust.utils.seeding import Stream, generator_for


class UnpaddedShardSampler(DistributedSampler):
    """Rank r reads items r, r + W, r + 2W, ...: every item exactly once over all ranks.

    A `DistributedSampler` subclass, so Lightning keeps it instead of wrapping it in its own padded sampler.
    Ranks may get one item more or less; torchmetrics sums the states, so the metric is exact.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class EpochSampler(DistributedSampler):
    """A fixed number of training samples per epoch, tiled from a small set (the paper's fixed epoch length).

    The paper's code tiles the bonafide set to 10,000 samples an epoch on CIFAR-10 (26,032 on SVHN), so every N
    gets the same number of optimizer steps. Epoch e's global order is a pure function of (seed, e): consecutive
    passes, each a fresh permutation (every image once per pass, no replacement inside it), cut to
    ``epoch_samples`` and extended to a multiple of the world size; rank r reads positions r, r + W, ... of it, so
    a resumed run and any number of processes see the batches of one uninterrupted process. A
    `DistributedSampler` subclass, so Lightning calls `set_epoch` and does not wrap it.

    Args:
        dataset: the training set (only its length is used).
        epoch_samples: samples per epoch over all ranks; None: one pass (a plain shuffled epoch).
        num_replicas: number of DDP processes.
        rank: this process's rank.
        seed: seed of the orders.
    """

    def __init__(
        self, dataset: Sized, epoch_samples: int | None, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.size = len(dataset)
        total = self.size if epoch_samples is None else epoch_samples
        self.num_samples = -(-total // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def global_order(self) -> torch.Tensor:
        """This epoch's order over all ranks: whole permutations of the set, tiled and cut to total_size."""
        generator = generator_for(self.seed, Stream.EPOCH_ORDER, self.epoch)
        passes = -(-self.total_size // self.size) if self.size else 0
        orders = [torch.randperm(self.size, generator=generator) for _ in range(passes)]
        return torch.cat(orders)[: self.total_size] if orders else torch.empty(0, dtype=torch.long)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
