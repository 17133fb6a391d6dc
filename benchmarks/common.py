"""Shared helpers of the benchmarks: interleaved timing, machine info, tiny data and nets, JSON and tables.

Every benchmark compares ours with a reference measured in the same run, candidates interleaved round by round
(the order flips every round, ABBA), because the 2 shared CPU cores of the build machine vary up to 3x with load:
only ratios measured side by side mean something (STYLE.md, Benchmarks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUT = Path(__file__).resolve().parent / "out"


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Wall-clock and process CPU seconds per call of one candidate over the timed rounds (warm-up excluded).

    CPU time (user + system, all threads) leaves out the time the process waited for a core held by another job,
    so on a loaded machine its ratio is the steadier one; when both ratios agree the number can be trusted.
    """

    seconds: list[float]
    cpu_seconds: list[float] = field(default_factory=list)
    minor_faults: list[int] = field(default_factory=list)  # page faults: fresh memory the allocator mapped

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> tuple[float, float]:
        """First and third quartile (inclusive method; equal to the median for one sample)."""
        if len(self.seconds) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q[0], q[2]


def time_interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    cpu_clock: Callable[[], float] = time.process_time,
) -> dict[str, Timing]:
    """Time each candidate `repeats` times, interleaved: one call of each per round, the order reversed every round.

    Interleaving exposes every candidate to the same load; reversing (ABBA) cancels a slow drift. `gc.collect()`
    runs before each round, never inside a timed call. `cpu_clock` measures CPU time (`children_cpu_time` for
    candidates that run child processes).
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    timings = {name: Timing([], [], []) for name in names}
    for round_ in range(repeats):
        gc.collect()
        for name in names if round_ % 2 == 0 else reversed(names):
            faults, start, cpu_start = _minor_faults(), time.perf_counter(), cpu_clock()
            candidates[name]()
            timings[name].seconds.append(time.perf_counter() - start)
            timings[name].cpu_seconds.append(cpu_clock() - cpu_start)
            timings[name].minor_faults.append(_minor_faults() - faults)
    return timings


def children_cpu_time() -> float:
    """User + system CPU seconds of this process's finished child processes."""
    times = os.times()
    return times.children_user + times.children_system


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where `resource` is missing)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def paired_ratio(ours: Sequence[float], reference: Sequence[float]) -> float:
    """Median of the per-round ratios ours/reference: robust to load that changes between rounds."""
    return statistics.median(a / b for a, b in zip(ours, reference, strict=True))


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Row:
    """One line of the results table: a ratio (or another number) of ours against a reference and its goal.

    ``value`` is ours/reference for timings (median of paired per-round ratios), else the measured number
    itself; ``goal`` is an upper bound on it (a lower bound with ``lower_bound``, e.g. a speed-up; None: reported
    only).
    """

    bench: str
    name: str
    sizes: str
    value: float
    goal: float | None = None
    repeats: int | None = None
    ours: float | None = None  # median seconds
    reference: float | None = None
    cpu_ratio: float | None = None  # median of paired per-round ratios of process CPU time
    ours_iqr: tuple[float, float] | None = None
    reference_iqr: tuple[float, float] | None = None
    unit: str = "x"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    lower_bound: bool = False

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        return bool(self.value >= self.goal) if self.lower_bound else bool(self.value <= self.goal)

    @property
    def key(self) -> str:
        """`bench / name`: how results.md and `make bench` match a row with its previous value."""
        return f"{self.bench} / {self.name}"

    def goal_text(self) -> str:
        return "-" if self.goal is None else f"{'>=' if self.lower_bound else '<='} {self.goal:g}"


def timing_row(
    bench: str, name: str, sizes: str, ours: Timing, reference: Timing, goal: float | None, note: str = ""
) -> Row:
    """A Row from two interleaved timings."""
    return Row(
        bench=bench,
        name=name,
        sizes=sizes,
        value=paired_ratio(ours.seconds, reference.seconds),
        cpu_ratio=paired_ratio(ours.cpu_seconds, reference.cpu_seconds) if ours.cpu_seconds else None,
        goal=goal,
        repeats=len(ours.seconds),
        ours=ours.median,
        reference=reference.median,
        ours_iqr=ours.iqr,
        reference_iqr=reference.iqr,
        note=note,
        extra={
            "ratio_of_medians": ours.median / reference.median,
            "ours_seconds": [round(s, 6) for s in ours.seconds],
            "reference_seconds": [round(s, 6) for s in reference.seconds],
            "ours_cpu_seconds": [round(s, 6) for s in ours.cpu_seconds],
            "reference_cpu_seconds": [round(s, 6) for s in reference.cpu_seconds],
            "ours_minor_faults": ours.minor_faults,
            "reference_minor_faults": reference.minor_faults,
        },
    )


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load, Python and torch versions and threads: what a timing depends on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def write_json(name: str, rows: Sequence[Row], settings: Mapping[str, Any] | None = None) -> Path:
    """Write ``benchmarks/out/<name>.json`` with the machine, the settings and every row; return its path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    payload = {
        "machine": machine_info(),
        "settings": dict(settings or {}),
        "rows": [asdict(row) | {"met": row.met} for row in rows],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.3g}"


def value_text(row: Row) -> str:
    """The ratio/value cell: '1.046x' for a timing ratio, '35.2 s' for seconds, else the number."""
    if row.unit == "x" and row.ours is not None:
        return f"{row.value:.3f}x"
    if row.unit == "s":
        return f"{row.value:.1f} s"
    return _number(row.value)


def table(rows: Sequence[Row], markdown: bool = False, previous: Mapping[str, str] | None = None) -> str:
    """Rows as a fixed-width text table (or Markdown): name, sizes, repeats, medians, ratio, CPU ratio, goal, met.

    With `previous` (row key -> the value last recorded in docs/results.md) a `previous` column follows the goal.
    """
    header = ["bench", "name", "sizes", "repeats", "median ours", "median reference", "ratio/value", "cpu ratio"]
    header += ["goal", "met?"] + ([] if previous is None else ["previous"])
    lines = [
        [
            row.bench,
            row.name,
            row.sizes,
            "-" if row.repeats is None else str(row.repeats),
            _number(row.ours, "s"),
            _number(row.reference, "s"),
            value_text(row),
            "-" if row.cpu_ratio is None else f"{row.cpu_ratio:.3f}x",
            row.goal_text(),
            {None: "-", True: "yes", False: "NO"}[row.met],
        ]
        + ([] if previous is None else [previous.get(row.key, "-")])
        for row in rows
    ]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines])
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines])


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine, for printed tables and results.md."""
    return (
        f"{info['date']} | {info['cpu']}, {info['usable_cores']} of {info['cores']} cores, load {info['load_avg_1m']}"
        f" | Python {info['python']} | torch {info['torch']}, {info['torch_threads']} threads"
    )


def report(name: str, rows: Sequence[Row], settings: Mapping[str, Any] | None = None) -> None:
    """Print the table and the machine line, and write the JSON."""
    print(machine_line(machine_info()))
    print(table(rows))
    for row in rows:
        if row.note:
            print(f"  {row.name}: {row.note}")
    print(f"wrote {write_json(name, rows, settings)}")


def parse_options(description: str) -> bool:
    """Command line of every benchmark (`--quick`, `--threads`); sets torch's threads and returns quick.

    One thread by default: on the 2 shared cores another job's process makes every 2-thread parallel region wait
    for a descheduled thread. Measured here (TinyNet eval pass, 15 repeats, load ~2.8): 2 threads 140-173 ms with an
    IQR of 22-240 % of the median, 1 thread 70 ms with 3-6 %. `--threads 2` measures the default configuration.
    """
    return bool(parse_args(description).quick)


def parse_args(
    description: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """`parse_options` with a benchmark's own options added by `add_arguments`; returns every option."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see common.py)")
    if add_arguments is not None:
        add_arguments(parser)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    return options


# ------------------------------------------------------------------------------------------------ data and nets
def digits(split: str = "train") -> tuple[Tensor, Tensor, tuple[tuple[float, ...], tuple[float, ...]]]:
    """scikit-learn digits as the package embeds them (32x32x3): images float [N,3,32,32] in [0,1], labels, stats."""
    from mcrobust.data.sources import channel_statistics, load_digits

    data = load_digits(split)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return x, torch.from_numpy(data.labels), channel_statistics(load_digits("train").images)


def trained_tiny(seed: int = 0, epochs: int = 4) -> nn.Module:
    """TinyNet trained on the digits with plain torch (5-30 s on 2 shared cores), cached under benchmarks/out/."""
    from mcrobust.nets import create_net, find_normalize

    x, y, (mean, std) = digits("train")
    torch.manual_seed(seed)
    net = create_net("tiny", num_classes=10)
    normalize = find_normalize(net)
    assert normalize is not None
    normalize.set_statistics(mean, std)
    cache = OUT / f"tiny_digits_seed{seed}_epochs{epochs}.pt"
    if cache.exists():
        net.load_state_dict(torch.load(cache, weights_only=True))
        return net.eval()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), cache)
    return net.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of correct predictions, model in eval mode."""
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def run_main(name: str, run: Callable[[bool], tuple[list[Row], dict[str, Any]]], description: str) -> None:
    """What every benchmark's main() does: parse --quick, run, print and write the JSON."""
    quick = parse_options(description)
    rows, settings = run(quick)
    report(name, rows, settings | {"quick": quick, "threads": torch.get_num_threads(), "argv": sys.argv[1:]})
