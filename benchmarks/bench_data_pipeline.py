"""The batched data pipeline against the per-sample torchvision v2 DataLoader, same batches (goal: >= 5x images/s).

Data: CIFAR-sized fake images (uint8 10,000 x 32 x 32 x 3, random labels) with the CIFAR augmentation (random crop
with 4-pixel zero padding, horizontal flip). Reference: `DataLoader(ArrayDataset(..., cifar_augmentation(32)),
batch_size=128, sampler=EpochSampler)`, what `data.pipeline: loader` serves (per-image v2 transforms, default
collate, main process); ours: `mcrobust.data.batched.batched_loader`, what `data.pipeline: batched` serves. Both
read the epoch's order from the same `EpochSampler` (checked: the same indices batch by batch), so they cut the
same batches (the augmentation draws differ: the loader's come from the global RNG). Rows:

1. one training epoch of the data pipeline alone, speed-up loader / batched (goal >= 5);
2. one evaluation pass (no augmentation, batch 256, in order), speed-up reported;
3. a TinyNet training step (forward, CE, backward, SGD) fed by each pipeline: the fraction of the step's time spent
   fetching the batch (goal for batched < 0.05; the loader's reported).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import Row, paired_ratio, run_main, time_interleaved
from torch import nn
from torch.utils.data import DataLoader

from mcrobust.data.batched import batched_loader
from mcrobust.data.samplers import EpochSampler, UnpaddedShardSampler
from mcrobust.data.transforms import ArrayDataset, cifar_augmentation
from mcrobust.nets import TinyNet

NAME = "data_pipeline"
SPEEDUP_GOAL = 5.0
DATA_FRACTION_GOAL = 0.05
BATCH, EVAL_BATCH, EPOCH = 128, 256, 1


def fake_cifar(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (count, 32, 32, 3) random images and int64 labels: CIFAR-10's sizes and dtypes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count)


def training_loaders(images: np.ndarray, labels: np.ndarray) -> dict[str, DataLoader]:
    """Both pipelines over the same augmented data set, at the same epoch of the same sampler seed."""
    dataset = ArrayDataset(images, labels, cifar_augmentation(32))
    sampler = EpochSampler(dataset, None, seed=0)
    loaders = {
        "batched": batched_loader(dataset, BATCH, shuffle=True, seed=0),
        "loader": DataLoader(dataset, batch_size=BATCH, sampler=sampler),
    }
    for loader in loaders.values():
        loader.sampler.set_epoch(EPOCH)  # type: ignore[attr-defined]
    return loaders


def evaluation_loaders(images: np.ndarray, labels: np.ndarray) -> dict[str, DataLoader]:
    """Both pipelines over the same plain evaluation set, in order."""
    dataset = ArrayDataset(images, labels)
    return {
        "batched": batched_loader(dataset, EVAL_BATCH),
        "loader": DataLoader(dataset, batch_size=EVAL_BATCH, sampler=UnpaddedShardSampler(dataset, 1, 0)),
    }


def check_same_order(loaders: dict[str, DataLoader]) -> int:
    """Assert both pipelines serve the same dataset indices batch by batch; return the number of batches."""
    orders = [[batch[2] for batch in loader] for loader in loaders.values()]
    assert len(orders[0]) == len(orders[1])
    assert all(torch.equal(a, b) for a, b in zip(*orders, strict=True)), "the pipelines cut different batches"
    return len(orders[0])


def consume(loader: DataLoader) -> Callable[[], None]:
    """One pass over the loader, each batch made and dropped."""

    def run() -> None:
        for _ in loader:
            pass

    return run


def speedup_row(label: str, sizes: str, timings: dict[str, Any], images: int, goal: float | None) -> Row:
    """Speed-up loader / batched (median of paired per-round ratios) with both images/s in the note."""
    ours, reference = timings["batched"], timings["loader"]
    rate = {name: images / timing.median for name, timing in timings.items()}
    return Row(
        bench=NAME,
        name=label,
        sizes=sizes,
        value=paired_ratio(reference.seconds, ours.seconds),
        goal=goal,
        lower_bound=True,
        repeats=len(ours.seconds),
        ours=ours.median,
        reference=reference.median,
        cpu_ratio=paired_ratio(reference.cpu_seconds, ours.cpu_seconds),
        ours_iqr=ours.iqr,
        reference_iqr=reference.iqr,
        note=f"images/s: batched {rate['batched']:,.0f}, per-sample loader {rate['loader']:,.0f} (speed-up: higher "
        "is better; median ours / reference columns are seconds per pass)",
        extra={"images_per_second": rate, "ours_seconds": ours.seconds, "reference_seconds": reference.seconds},
    )


def sgd_step(net: nn.Module) -> Callable[[tuple[torch.Tensor, ...]], None]:
    """One plain training step of `net` on a batch (x, y, ...)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net.train()

    def step(batch: tuple[torch.Tensor, ...]) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(batch[0]), batch[1]).backward()
        optimizer.step()

    return step


def timed_steps(batches: Iterator[Any], step: Callable[[Any], None], count: int) -> tuple[float, float]:
    """(data seconds, step seconds) of `count` steps, each fetching its batch from `batches` first."""
    data = compute = 0.0
    for _ in range(count):
        start = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        step(batch)
        data, compute = data + fetched - start, compute + time.perf_counter() - fetched
    return data, compute


def step_fraction_rows(loaders: dict[str, DataLoader], steps: int, rounds: int) -> list[Row]:
    """Data-time fraction of a TinyNet step for each pipeline, `steps` steps per round, rounds interleaved (ABBA)."""
    torch.manual_seed(0)
    step = sgd_step(TinyNet())
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    for name in loaders:  # warm-up: first batches, allocator, kernels
        timed_steps(iterators[name], step, 2)
    fractions: dict[str, list[float]] = {name: [] for name in loaders}
    per_batch: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
    for round_ in range(rounds):
        for name in loaders if round_ % 2 == 0 else reversed(list(loaders)):
            data, compute = timed_steps(iterators[name], step, steps)
            fractions[name].append(data / (data + compute))
            per_batch[name].append((data / steps, compute / steps))
    rows = []
    for name, goal in (("batched", DATA_FRACTION_GOAL), ("loader", None)):
        data, compute = (statistics.median(part) for part in zip(*per_batch[name], strict=True))
        rows.append(
            Row(
                bench=NAME,
                name=f"TinyNet step, data-time fraction, {name}",
                sizes=f"batch {BATCH}, 32x32x3, crop+flip, {steps} steps x {rounds} rounds",
                value=statistics.median(fractions[name]),
                goal=goal,
                repeats=rounds,
                ours=data,
                reference=compute,
                unit="",
                note=f"{name}: data {data * 1e3:.2f} ms vs step {compute * 1e3:.1f} ms per batch (median ours = data, "
                "median reference = step)",
                extra={"fractions": fractions[name], "per_batch_seconds": per_batch[name]},
            )
        )
    return rows


def run(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Epoch and evaluation speed-ups, then the step fractions; --quick: 2,000 images, fewer repeats."""
    count, repeats, steps, rounds = (2_000, 2, 3, 2) if quick else (10_000, 5, 8, 5)
    images, labels = fake_cifar(count)
    train = training_loaders(images, labels)
    batches = check_same_order(train)
    sizes = f"{count:,} x 32x32x3 uint8, batch {BATCH}, crop(pad 4)+flip, {batches} batches"
    rows = [
        speedup_row(
            "training epoch, speed-up loader / batched",
            sizes,
            time_interleaved({name: consume(loader) for name, loader in train.items()}, repeats),
            count,
            SPEEDUP_GOAL,
        )
    ]
    evaluation = evaluation_loaders(images, labels)
    check_same_order(evaluation)
    rows.append(
        speedup_row(
            "evaluation pass, speed-up loader / batched",
            f"{count:,} x 32x32x3 uint8, batch {EVAL_BATCH}, no augmentation",
            time_interleaved({name: consume(loader) for name, loader in evaluation.items()}, repeats),
            count,
            None,
        )
    )
    rows += step_fraction_rows(training_loaders(images, labels), steps, rounds)
    return rows, {"images": count, "batch": BATCH, "eval_batch": EVAL_BATCH, "epoch": EPOCH, "net": "TinyNet()"}


def main() -> None:
    run_main(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
