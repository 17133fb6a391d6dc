"""Start-up of the command line against `python -c "import torch"` (goal: <= 1.5x), and `make demo`'s wall time.

Each candidate is a fresh process of this venv's Python (`python -m mcrobust --help`, `python -m mcrobust repair
--help`, `python -c "import torch"`), timed from spawn to exit, interleaved round by round (ABBA) in one run, so
the ratios compare like with like on the shared cores; the files are in the page cache after the warm-up round.
`--include-demo` also times `python scripts/demo.py` once (about a minute; goal <= 35 s on the idle 2-core
machine), writing into a temporary folder. Children get the Makefile's glibc settings (MALLOC_*) unless the
environment sets them, so the demo runs as `make demo` runs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import Row, children_cpu_time, machine_info, parse_args, report, time_interleaved, timing_row

NAME = "startup"
GOAL = 1.5
DEMO_GOAL = 35.0
ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import torch": ["-c", "import torch"],
    "mcrobust --help": ["-m", "mcrobust", "--help"],
    "mcrobust repair --help": ["-m", "mcrobust", "repair", "--help"],
}


MAKE_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
"""What the Makefile exports to every command (glibc keeps freed blocks): the demo is timed as `make demo` runs."""


def process(arguments: list[str], python: str = sys.executable) -> Callable[[], None]:
    """A call that runs `python arguments` in a fresh process from the repository root and checks it succeeded."""
    environment = MAKE_ENVIRONMENT | dict(os.environ)

    def run() -> None:
        done = subprocess.run(
            [python, *arguments], cwd=ROOT, env=environment, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(arguments)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")

    return run


def startup_rows(repeats: int) -> list[Row]:
    """Both commands against `import torch`, all three interleaved in the same rounds."""
    candidates = {name: process(arguments) for name, arguments in COMMANDS.items()}
    timings = time_interleaved(candidates, repeats, cpu_clock=children_cpu_time)
    reference = timings["import torch"]
    return [
        timing_row(
            NAME,
            f"`{name}` / `import torch`",
            f"fresh process, {sys.executable.removeprefix(str(ROOT) + '/')}",
            timings[name],
            reference,
            GOAL,
            note=f"{timings[name].median:.2f} s vs import torch {reference.median:.2f} s (median wall time)",
        )
        for name in COMMANDS
        if name != "import torch"
    ]


def demo_row() -> Row:
    """One run of `python scripts/demo.py` into a temporary folder: wall time in seconds against its goal."""
    with tempfile.TemporaryDirectory(prefix="mcrobust-bench-demo-") as folder:
        start, cpu = time.perf_counter(), children_cpu_time()
        process(["scripts/demo.py", "--out", str(Path(folder) / "demo")])()
        seconds, cpu_seconds = time.perf_counter() - start, children_cpu_time() - cpu
    return Row(
        bench=NAME,
        name="`make demo` wall time",
        sizes="scripts/demo.py, digits, default settings",
        value=seconds,
        goal=DEMO_GOAL,
        repeats=1,
        unit="s",
        note=f"{seconds:.1f} s wall, {cpu_seconds:.1f} s CPU (the goal is for an idle machine; load "
        f"{machine_info()['load_avg_1m']} at the end)",
        extra={"cpu_seconds": cpu_seconds},
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include-demo", action="store_true", help="also time scripts/demo.py (a minute or more)")


def main() -> None:
    options = parse_args(__doc__ or NAME, add_arguments)
    repeats = 3 if options.quick else 7
    rows = startup_rows(repeats)
    if options.include_demo:
        rows.append(demo_row())
    settings: dict[str, Any] = {"quick": options.quick, "repeats": repeats, "include_demo": options.include_demo}
    report(NAME, rows, settings | {"threads": torch.get_num_threads(), "argv": sys.argv[1:]})


if __name__ == "__main__":
    main()
