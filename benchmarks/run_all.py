"""Run every benchmark, print one combined table, write out/summary.json and out/results.md (`make bench`).

Each benchmark runs as its own process (`python benchmarks/bench_x.py`, the same command as alone), so one
benchmark's allocator and thread-pool state cannot leak into the next one's timings; its rows are read back from
the out/<name>.json it writes. results.md is a Markdown section to paste into docs/results.md: date, machine,
torch version and threads, then the table. Every row stands next to its goal and, where docs/results.md already
records it (a benchmark table row with the same bench and name, from the most recent dated section that has it;
the demo's wall time from its "`make demo`" line), the previous value. A benchmark that fails is reported and
the others still run; the exit status is 1 then. `--include-demo` also times `scripts/demo.py` (a minute or more).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import OUT, Row, machine_info, machine_line, parse_args, table

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "docs" / "results.md"
BENCHES = ("bench_curve_step", "bench_hessian", "bench_pgd", "bench_path_eval", "bench_data_pipeline", "bench_startup")
DEMO_KEY = "startup / `make demo` wall time"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DEMO_LINE = re.compile(r"`make demo`\*{0,2}[^:\n]*:\s*\**([\d.]+) ?s\b")


def available(module: str) -> str | None:
    """None when the benchmark can run, else why it is skipped."""
    if module == "bench_path_eval":
        try:
            importlib.import_module("mcrobust.analysis.evaluation")
        except ImportError as error:
            return f"mcrobust.analysis.evaluation.PointEvaluator is not importable yet ({error})"
    return None


def read_rows(path: Path) -> list[Row]:
    """The rows of a benchmark's JSON."""
    names = {field.name for field in dataclasses.fields(Row)}
    return [Row(**{k: v for k, v in row.items() if k in names}) for row in json.loads(path.read_text())["rows"]]


def previous_values(text: str) -> dict[str, str]:
    """Row key (`bench / name`) -> the ratio/value docs/results.md last recorded for it (latest dated section wins).

    Benchmark tables are recognised by their header (`| bench | name | ... | ratio/value |`); a section's date is
    the first YYYY-MM-DD in its `## ` heading (undated sections count as oldest, later ones win ties).
    """
    found: dict[str, tuple[str, str]] = {}
    for section in re.split(r"(?m)^(?=## )", text):
        heading = section.splitlines()[0] if section else ""
        date = (_DATE.search(heading) or _DATE.search("0000-00-00")).group()  # type: ignore[union-attr]
        for key, value in _table_values(section) + _demo_value(section, heading):
            if key not in found or date >= found[key][0]:
                found[key] = (date, value)
    return {key: value for key, (_, value) in found.items()}


def _table_values(section: str) -> list[tuple[str, str]]:
    """(key, ratio/value) of every row of the benchmark tables in one section."""
    values, columns = [], None
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")] if line.startswith("|") else None
        if cells is None:
            columns = None
        elif cells[:2] == ["bench", "name"] and "ratio/value" in cells:
            columns = cells
        elif columns is not None and len(cells) == len(columns) and not set(line) <= set("|-: "):
            row = dict(zip(columns, cells, strict=True))
            values.append((f"{row['bench']} / {row['name'].replace(chr(92) + '|', '|')}", row["ratio/value"]))
    return values


def _demo_value(section: str, heading: str) -> list[tuple[str, str]]:
    """The demo's wall time from a benchmark section's "`make demo` (goal ...): 89 s" line."""
    if "bench" not in heading.lower():
        return []
    match = _DEMO_LINE.search(section)
    return [(DEMO_KEY, f"{float(match.group(1)):.1f} s")] if match else []


def run_one(module: str, quick: bool, include_demo: bool = False) -> tuple[list[Row], dict[str, Any]]:
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
    command += ["--quick"] if quick else []
    command += ["--include-demo"] if include_demo and module == "bench_startup" else []
    returncode = subprocess.call(command)
    seconds = round(time.perf_counter() - start, 1)
    if returncode != 0 or not path.exists():
        return [], {"status": "failed", "error": f"exit status {returncode}, see its output above", "seconds": seconds}
    print(f"({seconds:.0f} s)", flush=True)
    return read_rows(path), {"status": "ok", "seconds": seconds, "json": path.name}


def markdown(
    rows: list[Row], info: dict[str, Any], statuses: dict[str, Any], quick: bool, previous: dict[str, str]
) -> str:
    """The section for docs/results.md."""
    lines = [
        f"## Benchmarks, {info['date'][:10]}{' (--quick)' if quick else ''}",
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} of {info['cores']} cores (shared; 1-min load "
        f"{info['load_avg_1m']:.1f} at the start), Python {info['python']}, torch {info['torch']}, "
        f"{info['torch_threads']} threads. Ratios are ours / reference, medians of per-round ratios measured "
        "interleaved in one run; goals are upper bounds, `>=` marks a lower bound (a speed-up); `previous` is the "
        "value this file recorded before. `make bench` (`benchmarks/run_all.py`) regenerates this.",
        "",
        table(rows, markdown=True, previous=previous),
        "",
    ]
    notes = [f"- {row.bench} / {row.name}: {row.note}" for row in rows if row.note]
    notes += [
        f"- {name}: {status['status']}: {status.get('reason') or status.get('error', '').strip().splitlines()[-1]}"
        for name, status in statuses.items()
        if status["status"] != "ok"
    ]
    return "\n".join(lines + (["Notes:", "", *notes, ""] if notes else []))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include-demo", action="store_true", help="also time scripts/demo.py (a minute or more)")
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="run these benchmarks only")


def main() -> None:
    options = parse_args(__doc__ or "run every benchmark", add_arguments)
    quick = bool(options.quick)
    info = machine_info()
    print(machine_line(info), flush=True)
    previous = previous_values(RESULTS.read_text()) if RESULTS.is_file() else {}
    start = time.perf_counter()
    rows: list[Row] = []
    statuses: dict[str, Any] = {}
    for module in options.only or BENCHES:
        bench_rows, statuses[module] = run_one(module, quick, options.include_demo)
        rows += bench_rows
    print(f"\n== all benchmarks ({time.perf_counter() - start:.0f} s{', --quick' if quick else ''})")
    print(machine_line(info))
    print(table(rows, previous=previous))
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": info,
        "quick": quick,
        "seconds": round(time.perf_counter() - start, 1),
        "benches": statuses,
        "rows": [dataclasses.asdict(row) | {"met": row.met, "previous": previous.get(row.key)} for row in rows],
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown(rows, info, statuses, quick, previous))
    print(f"wrote {OUT / 'summary.json'} and {OUT / 'results.md'}")
    if any(status["status"] == "failed" for status in statuses.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
