"""Run every benchmark, print one combined table, write out/summary.json and out/results.md (`make bench`).

results.md is a Markdown section to paste into docs/results.md: date, machine, torch version and threads, then
the table. Each benchmark also writes its own out/<name>.json. A benchmark that fails is reported and the others
still run; the exit status is 1 then.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from dataclasses import asdict
from typing import Any

from common import OUT, Row, machine_info, machine_line, parse_options, table, write_json

BENCHES = ("bench_curve_step", "bench_hessian", "bench_pgd", "bench_path_eval")


def available(module: str) -> str | None:
    """None when the benchmark can run, else why it is skipped."""
    if module == "bench_path_eval":
        try:
            importlib.import_module("mcrobust.evaluation")
        except ImportError as error:
            return f"mcrobust.evaluation.PointEvaluator is not importable yet ({error})"
    return None


def run_one(module: str, quick: bool, info: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    """Run one benchmark in this process and write its own JSON; returns its rows and a status record."""
    skip = available(module)
    if skip is not None:
        print(f"== {module}: skipped: {skip}")
        return [], {"status": "skipped", "reason": skip}
    print(f"== {module}", flush=True)
    start = time.perf_counter()
    try:
        bench = importlib.import_module(module)
        rows, settings = bench.run(quick)
    except Exception:  # one failing benchmark must not hide the others' numbers
        traceback.print_exc()
        return [], {"status": "failed", "error": traceback.format_exc(limit=3)}
    seconds = time.perf_counter() - start
    path = write_json(bench.NAME, rows, settings | {"quick": quick, "threads": info["torch_threads"]})
    print(table(rows), f"\n({seconds:.0f} s, wrote {path})", flush=True)
    return rows, {"status": "ok", "seconds": round(seconds, 1), "json": path.name}


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
        bench_rows, statuses[module] = run_one(module, quick, info)
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
        "rows": [asdict(row) | {"met": row.met} for row in rows],
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown(rows, info, statuses, quick))
    print(f"wrote {OUT / 'summary.json'} and {OUT / 'results.md'}")
    if any(status["status"] == "failed" for status in statuses.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
