"""The GPU suite of issue 17: one prepared run of at most 10 minutes of GPU time, JSON + Markdown per section.

Sections, in order (the longest last, so a run cut short still leaves the others):

1. data pipeline on the device: one epoch of the batched pipeline (uint8 arrays on the GPU, one gather per batch)
   against the per-sample torchvision v2 DataLoader (main process, and 8 workers with pinned memory), batches moved
   to the device and synchronised; a short Lightning fit records where its training batches were made;
2. VGG16-BN CIFAR-10 training epoch (all training images, SGD, the batched pipeline): fp32, bf16-mixed autocast +
   channels_last, and the same under torch.compile (its compile time apart); images/s and ratios;
3. the curve step: a 3-bend Bezier CurveModel step against a plain step (VGG16-BN, batch 128), interleaved;
4. input-Hessian top eigenvalue of 256 test images, batched against a per-sample loop (same start vectors);
5. PGD (eps 8/255, 10 steps) of `mcrobust.threats.evasion.PGD` against `torchattacks.PGD`, VGG16-BN, batch 256;
6. the backdoor repair chain on CIFAR-10 from the real JPEGs: two VGG16-BN endpoints trained here (briefly, bf16,
   BadNets 3x3 patch, 10 % of the non-target images, target 1), then `mcrobust.repair()` joining them with a path
   trained on 2,500 clean images of one test half and evaluated on the other half; wall time of each stage.

Every timing synchronises the device before reading the clock. `--smoke` runs every section with tiny sizes and
TinyNet in place of the big nets, on the CPU unless `--device` says otherwise, in well under a minute; the zips
are optional there (random images stand in). Output: `<out>/gpu_suite.json` and `<out>/gpu_suite.md`, rewritten
after every section.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from cifar_jpeg import DEFAULT_ROOT, read_split, synthetic_split
from common import Row, machine_info, paired_ratio, table, time_interleaved, timing_row
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mcrobust.data.batched import BatchedArrays, EpochBatchSampler, batched_loader
from mcrobust.data.samplers import EpochSampler
from mcrobust.data.sources import ArraySplit, channel_statistics
from mcrobust.data.transforms import ArrayDataset, cifar_augmentation
from mcrobust.nets import create_net, find_normalize
from mcrobust.threats.backdoor import poison
from mcrobust.threats.triggers import PatchTrigger

NAME = "gpu_suite"
TARGET = 1


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the real run and `--smoke`."""

    net: str = "vgg16_bn"  # epoch, curve step, PGD and chain
    hessian_net: str = "preresnet20"
    per_class: int | None = None  # training images per class (None: all 5,000)
    pipeline_images: int = 10_000
    batch: int = 128
    warmup_steps: int = 10
    compile: bool = True
    curve_repeats: int = 15
    hessian_batch: int = 256
    pgd_batch: int = 256
    pgd_repeats: int = 5
    endpoint_epochs: int = 8
    bonafide: int = 2_500
    path_epochs: int = 10
    epoch_samples: int = 10_000
    fit_steps: int = 5
    workers: int = 8


SMOKE = Sizes(
    net="tiny",
    hessian_net="tiny",
    per_class=12,
    pipeline_images=256,
    batch=32,
    warmup_steps=1,
    compile=False,
    curve_repeats=2,
    hessian_batch=8,
    pgd_batch=16,
    pgd_repeats=1,
    endpoint_epochs=1,
    bonafide=60,
    path_epochs=1,
    epoch_samples=64,
    fit_steps=2,
    workers=2,
)


# ---------------------------------------------------------------------------------------------- device helpers
def pick_device(name: str) -> torch.device:
    """'auto': the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: timings read the clock only after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(call: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """`call` followed by a device synchronisation (the queue is empty when the next timing starts)."""

    def run() -> Any:
        result = call()
        synchronize(device)
        return result

    return run


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 mixed precision on `device` (Lightning's bf16-mixed), or nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def device_info(device: torch.device) -> dict[str, Any]:
    """The GPU's name, memory and versions (or the CPU's), for the report."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1)}
        info |= {"capability": f"{properties.major}.{properties.minor}", "cudnn": torch.backends.cudnn.version()}
    return info


def to_device(net: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """The net on `device`, its 4-d weights channels_last when asked (what bf16 convolutions run fastest with)."""
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net  # type: ignore[call-overload]


def make_net(name: str, split: ArraySplit | None = None, seed: int = 0) -> nn.Module:
    """A registered net ('preresnet20' means depth 20) with the data's statistics in its Normalize layer."""
    torch.manual_seed(seed)
    classes = 10 if split is None else len(split.classes)
    net = (
        create_net("preresnet", depth=20, num_classes=classes)
        if name == "preresnet20"
        else create_net(name, num_classes=classes)
    )
    normalize = find_normalize(net)
    if split is not None and normalize is not None:
        normalize.set_statistics(*statistics(split))
    return net


_STATISTICS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def statistics(split: ArraySplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a split's images, computed once per split (seconds for 50,000 images)."""
    key = id(split.images)
    if key not in _STATISTICS:
        _STATISTICS[key] = channel_statistics(split.images)
    return _STATISTICS[key]


def tensors(split: ArraySplit, count: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first `count` images as float (N, C, H, W) in [0, 1] and their labels, on `device`."""
    x = torch.from_numpy(split.images[:count]).permute(0, 3, 1, 2).float().div(255.0)
    return x.contiguous().to(device), torch.from_numpy(split.labels[:count]).to(device)


# ------------------------------------------------------------------------------------------------ 1. pipeline
def pass_over(loader: DataLoader, device: torch.device) -> Callable[[], None]:
    """One epoch of the loader, every batch moved to `device` (a no-op when it is made there)."""

    def run() -> None:
        for batch in loader:
            batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        synchronize(device)

    return run


def pipeline_rows(train: ArraySplit, sizes: Sizes, device: torch.device) -> list[Row]:
    """Images/s of one augmented epoch: batched on the device vs the per-sample loader (0 and N workers)."""
    count = min(sizes.pipeline_images, len(train.labels))
    dataset = ArrayDataset(train.images[:count], train.labels[:count], cifar_augmentation(32))
    workers = f"loader, {sizes.workers} workers"
    loaders = {
        "batched": batched_loader(dataset, sizes.batch, shuffle=True, device=device),
        "loader": DataLoader(dataset, batch_size=sizes.batch, sampler=EpochSampler(dataset, None)),
        workers: DataLoader(
            dataset,
            batch_size=sizes.batch,
            sampler=EpochSampler(dataset, None),
            num_workers=sizes.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=True,
        ),
    }
    timings = time_interleaved({name: pass_over(loader, device) for name, loader in loaders.items()}, 3)
    rows = []
    for name in ("loader", workers):
        ours, reference = timings["batched"], timings[name]
        rows.append(
            Row(
                NAME,
                f"data pipeline epoch, speed-up {name} / batched",
                f"{count:,} images 32x32x3, batch {sizes.batch}, crop+flip, to {device.type}",
                paired_ratio(reference.seconds, ours.seconds),
                repeats=len(ours.seconds),
                ours=ours.median,
                reference=reference.median,
                note=f"images/s: batched {count / ours.median:,.0f}, {name} {count / reference.median:,.0f}",
                extra={"batched_images_per_s": count / ours.median, "reference_images_per_s": count / reference.median},
            )
        )
    return rows + [lightning_device_row(train, sizes, device)]


def lightning_device_row(train: ArraySplit, sizes: Sizes, device: torch.device) -> Row:
    """A short Lightning fit through RobustDataModule: on which device were its training batches made?"""
    import pytorch_lightning as pl

    from mcrobust.data.datamodules import RobustDataModule
    from mcrobust.systems import EndpointSystem
    from mcrobust.testing import quiet_trainer

    seen: list[str] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            seen.append(f"{batch[0].device} ({type(trainer.train_dataloader.dataset).__name__})")

    part = ArraySplit(train.images[: sizes.pipeline_images], train.labels[: sizes.pipeline_images], train.classes)
    datamodule = RobustDataModule(dataset="image_folder", batch_size=sizes.batch, augment=True)
    datamodule.given_splits = (part, part)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    limits: dict[str, Any] = {"max_steps": sizes.fit_steps, "limit_val_batches": 0}
    trainer = quiet_trainer(accelerator=accelerator, devices=1, callbacks=[Record()], **limits)
    start = time.perf_counter()
    trainer.fit(EndpointSystem(make_net("tiny", part), optimizer=torch.optim.SGD), datamodule=datamodule)
    return Row(
        NAME,
        "Lightning fit, data.pipeline batched: training batches made on the training device",
        f"{sizes.fit_steps} steps, TinyNet, accelerator {accelerator}",
        float(bool(seen) and all(entry.startswith(str(device.type)) for entry in seen)),
        goal=1.0,
        lower_bound=True,
        unit="",
        note=f"batches seen: {sorted(set(seen))}; fit {time.perf_counter() - start:.1f} s",
    )


# -------------------------------------------------------------------------------------------------- 2. epoch
def train_epoch(
    net: nn.Module, arrays: BatchedArrays, sampler: EpochBatchSampler, device: torch.device, bf16: bool, warmup: int
) -> tuple[float, int]:
    """SGD over the sampler's batches; returns (seconds after the first `warmup` steps, images in that time)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    net.train()
    timed, start = 0, time.perf_counter()
    for step, plan in enumerate(sampler, start=1):
        x, y, _ = arrays[plan]
        with autocast(device, bf16):
            loss = F.cross_entropy(net(x.contiguous(memory_format=memory_format)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == warmup:  # the clock starts after warm-up (cudnn autotuning, compilation)
            synchronize(device)
            start = time.perf_counter()
        timed += len(y) if step > warmup else 0
    synchronize(device)
    return time.perf_counter() - start, timed


def epoch_rows(train: ArraySplit, sizes: Sizes, device: torch.device) -> list[Row]:
    """fp32 vs bf16 + channels_last (+ torch.compile): one epoch of the training split, after warm-up steps."""
    full = len(train.labels) // sizes.batch * sizes.batch  # whole batches only: one shape for compile
    dataset = ArrayDataset(train.images, train.labels, cifar_augmentation(32))
    arrays = BatchedArrays(dataset, device)
    variants = {"fp32": (False, False), "bf16-mixed + channels_last": (True, False)}
    if sizes.compile:
        variants["bf16-mixed + channels_last + compile"] = (True, True)
    rows, fp32 = [], None
    for name, (bf16, compiled) in variants.items():
        net = to_device(make_net(sizes.net, train), device, bf16)
        sampler = EpochBatchSampler(dataset, sizes.batch, full + sizes.warmup_steps * sizes.batch, draws=3)
        start = time.perf_counter()
        label, text = f"{sizes.net} epoch, {name}", f"{full:,} images, batch {sizes.batch}"
        try:
            model = torch.compile(net) if compiled else net
            elapsed, images = train_epoch(model, arrays, sampler, device, bf16, sizes.warmup_steps)  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - compile may be unavailable: record why and go on
            note = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            rows.append(Row(NAME, label, text, float("nan"), unit="s", note=note))
            continue
        warm = time.perf_counter() - start - elapsed
        note = f"{images / elapsed:,.0f} images/s, epoch {elapsed:.2f} s, warm-up (+compile) {warm:.1f} s"
        extra = {"images_per_s": images / elapsed, "warmup_s": warm}
        rows.append(Row(NAME, label, text, elapsed, unit="s", note=note, extra=extra))
        fp32 = elapsed if fp32 is None else fp32
        if name != "fp32":
            rows.append(Row(NAME, f"{label} / fp32", "epoch time ratio", elapsed / fp32, unit="", note=note))
    return rows


# --------------------------------------------------------------------------------------------- 3. curve step
def curve_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    """CurveModel step / plain step, the same batch, interleaved (bench_curve_step's two steps, synchronised)."""
    from bench_curve_step import curve_step, plain_step

    from mcrobust.paths.curves import CurveModel

    net, other = make_net(sizes.net).to(device), make_net(sizes.net, seed=1).to(device)
    curve = CurveModel(make_net(sizes.net), kind="bezier", num_bends=3)
    curve.set_endpoints(net.state_dict(), other.state_dict())
    curve.to(device)
    x, y = torch.rand(sizes.batch, 3, 32, 32, device=device), torch.randint(0, 10, (sizes.batch,), device=device)
    steps = {"curve": synced(curve_step(curve, x, y), device), "plain": synced(plain_step(net, x, y), device)}
    timings = time_interleaved(steps, sizes.curve_repeats, warmup=3)
    name = f"{sizes.net} curve step / plain step"
    return [
        timing_row(NAME, name, f"batch {sizes.batch}, bezier 3 bends, fp32", timings["curve"], timings["plain"], 1.05)
    ]


# ------------------------------------------------------------------------------------------------ 4. Hessian
def hessian_rows(test: ArraySplit, sizes: Sizes, device: torch.device) -> list[Row]:
    """Top input-Hessian eigenvalue of a batch at once vs one sample at a time (same seeds and indices)."""
    from mcrobust.analysis.hessian import input_hessian_power_iteration

    model = make_net(sizes.hessian_net, test).to(device).eval()
    x, y = tensors(test, sizes.hessian_batch, device)
    index = torch.arange(len(x), device=device)
    results: dict[str, tuple[Tensor, Tensor]] = {}

    def batched() -> None:
        result = input_hessian_power_iteration(model, x, y, iters=20, tol=1e-3, index=index)
        results["batched"] = result.values, result.iterations

    def loop() -> None:  # the per-sample loop is the long part: timed once, its results kept
        parts = [
            input_hessian_power_iteration(model, x[i : i + 1], y[i : i + 1], iters=20, tol=1e-3, index=index[i : i + 1])
            for i in range(len(x))
        ]
        results["loop"] = torch.cat([p.values for p in parts]), torch.cat([p.iterations for p in parts])

    input_hessian_power_iteration(model, x[:2], y[:2], iters=2, tol=1e-3)  # warm-up: kernels, cuDNN plans
    timings = time_interleaved({"loop": synced(loop, device), "batched": synced(batched, device)}, 1, warmup=0)
    (one_values, one_iterations), (values, iterations) = results["batched"], results["loop"]
    same = one_iterations == iterations
    difference = ((one_values - values).abs() / values.abs().clamp_min(1e-30))[:, 0]
    sizes_text = f"{len(x)} test images, {sizes.hessian_net}, iters 20, tol 1e-3"
    return [
        timing_row(
            NAME,
            f"{sizes.hessian_net} Hessian per-sample loop / batched",
            sizes_text,
            timings["loop"],
            timings["batched"],
            None,
            note="speed-up of batching (higher: batching helps more)",
        ),
        Row(
            NAME,
            f"{sizes.hessian_net} Hessian batched vs loop, same step count: max rel. diff",
            f"{int(same.sum())} of {len(x)} samples",
            float(difference[same].max()) if same.any() else float("nan"),
            goal=1e-4,
            unit="",
        ),
    ]


# ---------------------------------------------------------------------------------------------------- 5. PGD
def pgd_rows(test: ArraySplit, sizes: Sizes, device: torch.device) -> list[Row]:
    """mcrobust PGD vs torchattacks PGD: time (random start) and agreement (without it), bench_pgd's settings."""
    from bench_pgd import agreement_rows, attacks

    model = make_net(sizes.net, test).to(device).eval()
    x, y = tensors(test, sizes.pgd_batch, device)
    ours, theirs = attacks(model, random_start=True)
    calls = {"ours": synced(lambda: ours(x, y), device), "torchattacks": synced(lambda: theirs(x, y), device)}
    timings = time_interleaved(calls, sizes.pgd_repeats, warmup=1)
    sizes_text = f"batch {len(x)}, eps 8/255, alpha 2/255, 10 steps"
    row = timing_row(
        NAME, f"{sizes.net} PGD ours / torchattacks", sizes_text, timings["ours"], timings["torchattacks"], 1.0
    )
    return [row] + [replace(r, bench=NAME) for r in agreement_rows(sizes.net, model, x, y)]


# -------------------------------------------------------------------------------------------------- 6. chain
def train_endpoint(net: nn.Module, data: ArrayDataset, sizes: Sizes, device: torch.device, seed: int) -> nn.Module:
    """A backdoored endpoint: SGD with a one-cycle rate, bf16 + channels_last on a GPU, the batched pipeline."""
    arrays = BatchedArrays(data, device)
    sampler = EpochBatchSampler(data, sizes.batch, seed=seed, draws=arrays.draws)
    bf16 = device.type == "cuda"
    net = to_device(net, device, bf16).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    total = sizes.endpoint_epochs * len(sampler)
    warm = max(1, total // 10)  # linear warm-up, then cosine decay to 0

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for epoch in range(sizes.endpoint_epochs):
        sampler.set_epoch(epoch)
        for plan in sampler:
            x, y, _ = arrays[plan]
            with autocast(device, bf16):
                loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last) if bf16 else x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    synchronize(device)
    return net.eval().to(memory_format=torch.contiguous_format)


def chain_rows(train: ArraySplit, test: ArraySplit, sizes: Sizes, device: torch.device, data_note: str) -> list[Row]:
    """Two backdoored endpoints, then mcrobust.repair() on clean test-half images; wall time and effect."""
    import mcrobust
    from mcrobust.data.bonafide import split_stratified

    trigger = PatchTrigger()
    poisoned = poison(train.images, train.labels, trigger, TARGET, 0.1, seed=0)
    data = ArrayDataset(poisoned.images, poisoned.labels, cifar_augmentation(32))
    start = time.perf_counter()
    ends = [train_endpoint(make_net(sizes.net, train, seed), data, sizes, device, seed) for seed in (1, 2)]
    trained = time.perf_counter() - start
    pool, held = split_stratified(test.labels, len(test.labels) // 2, seed=0)
    bonafide = pool[split_stratified(test.labels[pool], min(sizes.bonafide, len(pool)), seed=0)[0]]
    clean = tensors(
        ArraySplit(test.images[bonafide], test.labels[bonafide], test.classes), len(bonafide), torch.device("cpu")
    )
    evaluation = tensors(ArraySplit(test.images[held], test.labels[held], test.classes), len(held), torch.device("cpu"))
    reports = [mcrobust.evaluate(end, evaluation, trigger=trigger, target=TARGET) for end in ends]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mcrobust-gpu-chain-") as folder:
        result = mcrobust.repair(
            copy.deepcopy(ends[0]).cpu(),
            clean,
            second=copy.deepcopy(ends[1]).cpu(),
            trigger=trigger,
            target=TARGET,
            eval=evaluation,
            epochs=sizes.path_epochs,
            epoch_samples=sizes.epoch_samples,
            batch_size=sizes.batch,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            progress=False,
            out=folder,
        )
    repaired = time.perf_counter() - start
    metrics = result.record["metrics"]
    ends_text = "; ".join(
        f"endpoint {i}: clean {r['clean_acc']:.3f}, ASR {r['asr']:.3f}" for i, r in enumerate(reports, 1)
    )
    sizes_text = f"{sizes.net}, {len(train.labels):,} training images ({data_note}), {len(bonafide)} bonafide"
    asr = float(metrics.get("asr", float("nan")))
    note = f"{ends_text}; repaired t={result.t:.2f}: clean {metrics['clean_acc']:.3f}, ASR {asr:.3f}"
    return [
        Row(
            NAME,
            "repair chain wall time (2 endpoints + mcrobust.repair)",
            sizes_text,
            trained + repaired,
            unit="s",
            note=note,
            extra={
                "endpoints_s": trained,
                "repair_s": repaired,
                "endpoints": reports,
                "repaired": metrics,
                "t": result.t,
            },
        ),
        Row(
            NAME,
            "repair chain: endpoints' training",
            f"{sizes.endpoint_epochs} epochs each, {'bf16 + channels_last' if device.type == 'cuda' else 'fp32'}",
            trained,
            unit="s",
        ),
        Row(
            NAME,
            "repair chain: mcrobust.repair()",
            f"path {sizes.path_epochs} epochs x {sizes.epoch_samples} samples, 11 t",
            repaired,
            unit="s",
        ),
        Row(
            NAME,
            "repaired point: ASR",
            f"t={result.t:.2f}, {len(held)} held-out test images",
            asr,
            unit="",
            note=note,
        ),
        Row(NAME, "repaired point: clean accuracy", f"t={result.t:.2f}", float(metrics["clean_acc"]), unit=""),
    ]


# ---------------------------------------------------------------------------------------------------- driver
@dataclass
class Suite:
    """Runs the sections within the time budget and rewrites the JSON and Markdown after each."""

    out: Path
    budget_s: float
    header: dict[str, Any]
    rows: list[Row]
    sections: dict[str, Any]
    start: float

    def run(self, name: str, section: Callable[[], list[Row]]) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget_s:
            self.sections[name] = {"status": "skipped", "reason": f"budget of {self.budget_s:.0f} s spent"}
        else:
            print(f"== {name} ({elapsed:.0f} s so far)", flush=True)
            begin = time.perf_counter()
            try:
                new = section()
                self.rows += new
                self.sections[name] = {"status": "ok", "seconds": round(time.perf_counter() - begin, 1)}
                print(table(new), flush=True)
            except Exception as error:  # noqa: BLE001 - one failed section must not lose the others
                traceback.print_exc()
                self.sections[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:500]}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next section starts with the memory a failed one may have held
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        payload = self.header | {"seconds": round(time.perf_counter() - self.start, 1), "sections": self.sections}
        payload["rows"] = [asdict(row) | {"met": row.met} for row in self.rows]
        (self.out / "gpu_suite.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        (self.out / "gpu_suite.md").write_text(self.markdown())

    def markdown(self) -> str:
        device, settings = self.header["device"], self.header["settings"]
        title = device.get("gpu") or f"{device['device']} (no GPU)"
        lines = [
            f"## GPU suite, {self.header['machine']['date'][:10]}: {title}",
            "",
            f"torch {device['torch']}, CUDA {device['cuda']}, {device.get('gpu_memory_gib', '-')} GiB; "
            f"data: {self.header['data']}; smoke: {settings['smoke']}; "
            f"{time.perf_counter() - self.start:.0f} s in all. `benchmarks/gpu_suite.sh` regenerates this.",
            "",
            table(self.rows, markdown=True),
            "",
            "Notes:",
            "",
        ]
        lines += [f"- {row.name}: {row.note}" for row in self.rows if row.note]
        lines += [
            f"- section {name}: {info['status']} {info.get('reason') or info.get('error') or _seconds(info)}".rstrip()
            for name, info in self.sections.items()
        ]
        return "\n".join(lines) + "\n"


def _seconds(info: dict[str, Any]) -> str:
    return f"({info['seconds']:.1f} s)" if "seconds" in info else ""


def load_data(root: Path, sizes: Sizes, smoke: bool) -> tuple[ArraySplit, ArraySplit, str]:
    """The JPEG splits (train: `per_class` per class), or random stand-ins when `--smoke` has no zips."""
    if smoke and not (root / "train.zip").is_file():
        return synthetic_split(10 * (sizes.per_class or 12)), synthetic_split(200, seed=1), "synthetic (no zips)"
    start = time.perf_counter()
    train, test = read_split(root, "train", sizes.per_class), read_split(root, "test", None if not smoke else 20)
    return train, test, f"CIFAR-10 JPEGs from {root} (read in {time.perf_counter() - start:.1f} s)"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or NAME).splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and TinyNet (CPU unless --device)")
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="folder holding train.zip and test.zip")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "gpu")
    parser.add_argument("--device", default=None, help="'auto' (default; the CPU with --smoke), 'cuda', 'cpu'")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip sections that would start after this")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the epoch section")
    parser.add_argument("--only", nargs="+", default=None, help="run these sections only (names as in the JSON)")
    return parser.parse_args()


def sections(
    train: ArraySplit, test: ArraySplit, sizes: Sizes, device: torch.device, note: str
) -> Iterator[tuple[str, Callable[[], list[Row]]]]:
    yield "pipeline", lambda: pipeline_rows(train, sizes, device)
    yield "epoch", lambda: epoch_rows(train, sizes, device)
    yield "curve_step", lambda: curve_rows(sizes, device)
    yield "hessian", lambda: hessian_rows(test, sizes, device)
    yield "pgd", lambda: pgd_rows(test, sizes, device)
    yield "chain", lambda: chain_rows(train, test, sizes, device, note)


def main() -> None:
    options = parse()
    sizes = SMOKE if options.smoke else Sizes()
    sizes = replace(sizes, compile=sizes.compile and not options.no_compile)
    device = pick_device(options.device or ("cpu" if options.smoke else "auto"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        torch.set_num_threads(min(4, torch.get_num_threads()))
    start = time.perf_counter()
    train, test, note = load_data(options.data, sizes, options.smoke)
    header = {"machine": machine_info(), "device": device_info(device), "data": note, "argv": sys.argv[1:]}
    header["settings"] = asdict(sizes) | {"smoke": options.smoke, "budget_s": options.budget_s}
    suite = Suite(options.out, options.budget_s, header, [], {}, start)
    for name, section in sections(train, test, sizes, device, note):
        if options.only is None or name in options.only:
            suite.run(name, section)
    print(f"wrote {options.out / 'gpu_suite.json'} and {options.out / 'gpu_suite.md'}")
    if any(info["status"] == "failed" for info in suite.sections.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
