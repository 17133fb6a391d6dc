"""Run every benchmark, print one combined table, write out/summary.json and out/results.md (`make bench`).

Each benchmark runs as its own process (`python benchmarks/bench_x.py`, the same command as alone), so one
benchmark's allocator and thread-pool state cannot leak into the next one's timings; its rows are read back from
the out/<name>.json it writes. results.md is a Markdown section to paste into docs/results.md: date, machine,
torch version and threads, then the table. A benchmark that fails is reported and the others still run; the exit
status is 1 then.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import OUT, Row, machine_info, machine_line, parse_options, table

HERE = Path(__file__).resolve().parent
BENCHES = ("bench_curve_step", "bench_hessian", "bench_pgd", "bench_path_eval")


def available(module: str) -> str | None:
    """None when the benchmark can run, else why it is skipped."""
    if module == "bench_path_eval":
        try:
            importlib.import_module("mcrobust.evaluation")
        except ImportError as error:
            return f"mcrobust.evaluation.PointEvaluator is not importable yet ({error})"
    return None


def read_rows(path: Path) -> list[Row]:
    """The rows of a benchmark's JSON."""
    names = {field.name for field in dataclasses.fields(Row)}
    return [Row(**{k: v for k, v in row.items() if k in names}) for row in json.loads(path.read_text())["rows"]]


def run_one(module: str, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Run one benchmark in a child process; returns its rows and a status record."""
    skip = available(module)
    if skip is not None:
        print(f"== {module}: skipped: {skip}")
        return [], {"status": "skipped", "reason": skip}
    print(f"== {module}", flush=True)
    path = OUT / f"{module.removeprefix('bench_')}.json"
    path.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / f"{module}.py"), "--threads", str(torch.get_num_threads())]
    start = time.perf_counter()
    returncode = subprocess.call(command + (["--quick"] if quick else []))
    seconds = round(time.perf_counter() - start, 1)
    if returncode != 0 or not path.exists():
        return [], {"status": "failed", "error": f"exit status {returncode}, see its output above", "seconds": seconds}
    print(f"({seconds:.0f} s)", flush=True)
    return read_rows(path), {"status": "ok", "seconds": seconds, "json": path.name}


def markdown(rows: list[Row], info: dict[str, Any], statuses: dict[str, Any], quick: bool) -> str:
    """The section for docs/results.md."""
    lines = [
        f"## Benchmarks, {info['date'][:10]}{' (--quick)' if quick else ''}",
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} of {info['cores']} cores (shared; 1-min load "
        f"{info['load_avg_1m']:.1f} at the start), Python {info['python']}, torch {info['torch']}, "
        f"{info['torch_threads']} threads. Ratios are ours / reference, medians of per-round ratios measured "
        "interleaved in one run; goals are upper bounds. `make bench` (`benchmarks/run_all.py`) regenerates this.",
        "",
        table(rows, markdown=True),
        "",
    ]
    notes = [f"- {row.bench} / {row.name}: {row.note}" for row in rows if row.note]
    notes += [
        f"- {name}: {status['status']}: {status.get('reason') or status.get('error', '').strip().splitlines()[-1]}"
        for name, status in statuses.items()
        if status["status"] != "ok"
    ]
    return "\n".join(lines + (["Notes:", "", *notes, ""] if notes else []))


def main() -> None:
    quick = parse_options(__doc__ or "run every benchmark")
    info = machine_info()
    print(machine_line(info), flush=True)
    start = time.perf_counter()
    rows: list[Row] = []
    statuses: dict[str, Any] = {}
    for module in BENCHES:
        bench_rows, statuses[module] = run_one(module, quick)
        rows += bench_rows
    print(f"\n== all benchmarks ({time.perf_counter() - start:.0f} s{', --quick' if quick else ''})")
    print(machine_line(info))
    print(table(rows))
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": info,
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 1),
        "benches": statuses,
        "rows": [dataclasses.asdict(row) | {"met": row.met} for row in rows],
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown(rows, info, statuses, quick))
    print(f"wrote {OUT / 'summary.json'} and {OUT / 'results.md'}")
    if any(status["status"] == "failed" for status in statuses.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
