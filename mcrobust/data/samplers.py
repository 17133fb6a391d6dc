"""Sharding of evaluation sets across DDP ranks without the duplicate padding that biases metrics."""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


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
