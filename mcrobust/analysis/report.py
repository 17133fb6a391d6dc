"""One table comparing path connection with the baselines, from finished run folders (Zhao et al. 2020).

    python -m mcrobust.analysis.report lightning_logs/version_3 lightning_logs/version_7 ... --out results/

A path run (`path_metrics.csv` + `path_summary.json`, written by `PathEvaluation` under `mcrobust test`) gives the
tampered endpoints (t=0 and t=1) and the path at its `selected_t`; every other run gives one row from its test
metrics (`test/acc`, `test/asr`, ...), read from its TensorBoard event files (or a CSVLogger `metrics.csv`). The
method's name comes from the run's `config.yaml`. The table is printed as Markdown and saved as `comparison.md` and
`comparison.csv`.

Beside clean_acc, asr and ra (BackdoorBench's robust accuracy: triggered images classified as their true class)
stands a 95% Wilson interval where the run wrote how many images it measured (`n_clean`, `n_triggered` in a path
table, `test/n_clean`, `test/n_triggered` in its test metrics; older runs have none, so no interval). The bonafide
column shows the train/holdout split the run used, and runs are named relative to the folder that holds them all.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from mcrobust.analysis.statistics import wilson_interval
from mcrobust.errors import DataError, MCRobustError, fail
from mcrobust.io.tables import atomic_write_text, format_value, markdown_table, read_csv, write_csv

__all__ = [
    "collect_runs",
    "comparison_columns",
    "comparison_table",
    "intervals",
    "main",
    "markdown_columns",
    "method_name",
    "write_comparison",
]

PATH_METRICS, PATH_SUMMARY, CONFIG_FILE, BONAFIDE_FILE = (
    "path_metrics.csv",
    "path_summary.json",
    "config.yaml",
    "bonafide_indices.json",
)
EVENTS_GLOB = "events.out.tfevents.*"
TEST_KEYS = {
    "clean_acc": "test/acc",
    "clean_acc_std": "test/acc_std",
    "asr": "test/asr",
    "asr_std": "test/asr_std",
    "ra": "test/ra",
    "ra_std": "test/ra_std",
    "injection_success": "test/injection_success",
    "robust_acc": "test/robust_acc",
    "n_clean": "test/n_clean",
    "n_triggered": "test/n_triggered",
}
"""Table column -> the scalar a system logs under `mcrobust test`."""
METHOD_ORDER = ("tampered", "path", "fine-tuning", "from scratch", "noisy", "fine-pruning")
INTERVALS = {"clean_acc": "n_clean", "asr": "n_triggered", "ra": "n_triggered"}
COUNT_NAMES = ("n_clean", "n_triggered")
"""Fraction column -> the column holding the number of images it was measured on (for its Wilson interval)."""
NO_BONAFIDE = {"bonafide_size": None, "bonafide_train": None, "holdout_size": None}
"""The bonafide columns of a model that never saw bonafide data (a tampered endpoint)."""
POINT_COLUMNS = ("clean_acc", "asr", "ra", "injection_success", "robust_acc", "n_clean", "n_triggered")


def note(message: str) -> None:
    """A one-line remark on stderr about a run that gives less than a full row."""
    sys.stderr.write(f"mcrobust: note: {message}\n")


# ------------------------------------------------------------------------------------------------ reading runs
def find_runs(path: str | Path) -> list[Path]:
    """The run folders at or below `path` (a folder holding a config, event file or path table)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"run folder {root} does not exist; give a lightning_logs/version_N folder")
    markers = [CONFIG_FILE, PATH_METRICS, "metrics.csv", EVENTS_GLOB]
    found = {marked.parent for marker in markers for marked in root.rglob(marker)}
    return sorted(found, key=lambda run: (len(run.parts), str(run)))


def read_config(run: Path) -> dict[str, Any]:
    """The run's `config.yaml` as saved by LightningCLI ({} when absent)."""
    path = run / CONFIG_FILE
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def test_metrics(run: Path) -> dict[str, float]:
    """The last value of every `test/*` scalar in the run's TensorBoard event files, else in its `metrics.csv`."""
    metrics: dict[str, float] = {}
    if any(run.glob(EVENTS_GLOB)):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            if tag.startswith("test/"):
                metrics[tag] = float(events.Scalars(tag)[-1].value)
    if not metrics and (run / "metrics.csv").is_file():
        with (run / "metrics.csv").open(newline="", encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                metrics.update({k: float(v) for k, v in row.items() if k.startswith("test/") and v not in ("", None)})
    return metrics


def method_name(config: Mapping[str, Any]) -> str:
    """What a run did, from its config: 'fine-tuning', 'from scratch', 'noisy (20 draws)', 'fine-pruning (0.5)', ..."""
    model = config.get("model") or {}
    system = str(model.get("class_path", "")).rsplit(".", 1)[-1]
    init = model.get("init_args") or {}
    data = config.get("data") or {}
    if system == "CurveSystem":
        return "path"
    if system == "NoisySystem":
        return f"noisy ({init.get('num_draws', 20)} draws)"
    if system == "FinePruningSystem":
        return f"fine-pruning ({init.get('prune_ratio', 0.5)})"
    if system in ("EndpointSystem", "AdversarialSystem") and data.get("train_on") == "bonafide":
        return "fine-tuning" if init.get("init_weights") else "from scratch"
    if system == "EndpointSystem":
        return "tampered" if data.get("poison") else "clean endpoint"
    if system == "InjectionSystem":
        return "tampered (injection)"
    return system or "unknown (no config.yaml)"


def _bonafide_file(run: Path) -> dict[str, Any]:
    path = run / BONAFIDE_FILE
    loaded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return loaded if isinstance(loaded, dict) else {}


def bonafide_size(run: Path, config: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> int | None:
    """Bonafide images of a run (train and holdout parts): its saved indices, else the path summary, else the config."""
    saved = _bonafide_file(run)
    if "indices" in saved:
        return len(saved["indices"])
    size = ((summary or {}).get("settings") or {}).get("bonafide_size")
    if size is None:
        size = ((config.get("data") or {}).get("bonafide") or {}).get("size")
    return None if size is None else int(size)


def bonafide_split(run: Path, config: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`bonafide_size` and its split into `bonafide_train` and `holdout_size` (images held out to choose t).

    The split comes from the saved indices' train/holdout lists, else the path summary's settings, else the config's
    `data.bonafide.holdout_size` (0 when the config has none); all None for a run without bonafide data.
    """
    size = bonafide_size(run, config, summary)
    saved = _bonafide_file(run)
    if size is None:
        return dict(NO_BONAFIDE)
    if isinstance(saved.get("train"), list) and isinstance(saved.get("holdout"), list):
        return {"bonafide_size": size, "bonafide_train": len(saved["train"]), "holdout_size": len(saved["holdout"])}
    holdout = ((summary or {}).get("settings") or {}).get("holdout_size")
    if holdout is None:
        holdout = ((config.get("data") or {}).get("bonafide") or {}).get("holdout_size", 0)
    holdout = int(holdout or 0)
    return {"bonafide_size": size, "bonafide_train": size - holdout, "holdout_size": holdout}


def _metrics_of_point(point: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {column: point.get(column) for column in POINT_COLUMNS}
    return row | {n: None if row[n] is None else int(row[n]) for n in COUNT_NAMES}


def path_rows(run: Path, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """'tampered A' (t=0), 'tampered B' (t=1) and 'path (t=...)' at the summary's selected_t."""
    points = read_csv(run / PATH_METRICS)
    summary_file = run / PATH_SUMMARY
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
    common = {"run": str(run), "config": _config_path(run)}
    rows = []
    for t, label in ((0.0, "tampered A"), (1.0, "tampered B")):
        point = next((p for p in points if p.get("t") is not None and abs(float(p["t"]) - t) < 1e-9), None)
        if point is not None:
            rows.append({"method": label, **NO_BONAFIDE, **_metrics_of_point(point), **common})
    selected = summary.get("selected_t")
    if selected is None or not points:
        note(f"{run} has no selected_t in {PATH_SUMMARY}: no path row (set data.bonafide.holdout_size or selection_t)")
        return rows
    point = min(points, key=lambda p: abs(float(p["t"]) - float(selected)))
    split = bonafide_split(run, config, summary)
    rows.append({"method": f"path (t={float(point['t']):.2f})", **split, **_metrics_of_point(point)})
    rows[-1].update(common)
    return rows


def run_rows(run: Path) -> list[dict[str, Any]]:
    """The rows one run folder contributes: several for a path, one for a tested model, none (with a note) else."""
    config = read_config(run)
    method = method_name(config)
    points = read_csv(run / PATH_METRICS) if (run / PATH_METRICS).is_file() else []
    if len(points) > 1 or (method == "path" and points):
        return path_rows(run, config)
    measured = test_metrics(run)
    row: dict[str, Any] = {column: measured.get(key) for column, key in TEST_KEYS.items()}
    row |= {n: None if row[n] is None else int(row[n]) for n in COUNT_NAMES}
    if not measured and points:
        row.update(_metrics_of_point(points[0]))  # a single model evaluated by PathEvaluation
    elif not measured:
        what = f"{PATH_METRICS} (test it with PathEvaluation)" if method == "path" else "test metrics"
        note(f"{run} ({method}) has no {what}, left out; a fit run is measured by `mcrobust test --ckpt_path ...`")
        return []
    split = NO_BONAFIDE if method.startswith(("tampered", "clean")) else bonafide_split(run, config)
    return [{"method": method, **split, **row, "run": str(run), "config": _config_path(run)}]


def _config_path(run: Path) -> str | None:
    return str(run / CONFIG_FILE) if (run / CONFIG_FILE).is_file() else None


def collect_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of the comparison table from run folders (each may also be a folder of runs, e.g. lightning_logs).

    Tampered-endpoint rows repeated by several path runs (same endpoints, same numbers) are listed once. Rows are
    ordered: tampered models first, then by bonafide size (largest first) and method (path, then the baselines).

    Runs without test metrics or a path table (e.g. fit runs) are left out with a note on stderr.

    Raises:
        DataError: a folder does not exist, or holds no run, or no run has anything to report.
    """
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    runs = []
    for path in paths:
        found = find_runs(path)
        if not found:
            raise DataError(f"{path} holds no run (no config.yaml, event file or {PATH_METRICS})")
        runs += found
    for run in runs:
        for row in run_rows(run):
            key = (row["method"], row.get("clean_acc"), row.get("asr"), row.get("robust_acc"))
            if row["method"].startswith("tampered") and key in seen:
                continue
            seen.add(key)
            rows.append(row | intervals(row))
    if not rows:
        raise DataError("none of the runs has test metrics or a path table; run `mcrobust test` first")
    root = log_root(runs)
    for row in rows:
        row.update({key: _relative(row[key], root) for key in ("run", "config")}, log_root=str(root))
    return sorted(rows, key=_order)


def intervals(row: Mapping[str, Any]) -> dict[str, float | None]:
    """`<metric>_ci95_low/high`: the 95% Wilson interval of clean_acc, asr and ra where the row has their n."""
    found: dict[str, float | None] = {}
    for column, count in INTERVALS.items():
        value, n = row.get(column), row.get(count)
        interval = wilson_interval(float(value), int(n)) if value is not None and n is not None else None
        found[f"{column}_ci95_low"], found[f"{column}_ci95_high"] = interval or (None, None)
    return found


def log_root(runs: Sequence[Path]) -> Path:
    """The folder that holds every run (for one run, the folder above it): rows name runs relative to it."""
    resolved = [run.resolve() for run in runs]
    common = Path(os.path.commonpath(resolved))
    return common.parent if common in resolved else common


def _relative(path: str | None, root: Path) -> str | None:
    return None if path is None else os.path.relpath(Path(path).resolve(), root)


def _order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    method = str(row["method"])
    rank = next((i for i, prefix in enumerate(METHOD_ORDER) if method.startswith(prefix)), len(METHOD_ORDER))
    tampered = rank == 0
    return (not tampered, -(row.get("bonafide_size") or 0), rank, method, str(row.get("run")))


# ------------------------------------------------------------------------------------------------ the table
def comparison_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The CSV columns: method, the bonafide split, clean_acc, asr (or injection_success), ra, robust_acc, n, run.

    Each fraction is followed by its Wilson interval (`_ci95_low`, `_ci95_high`) and the noisy baseline's spread over
    draws (`_std`) when some row has them; columns no run measured are left out.
    """

    def measured(column: str) -> bool:
        return any(row.get(column) is not None for row in rows)

    def with_spread(column: str) -> list[str]:
        spread = [f"{column}_ci95_low", f"{column}_ci95_high", f"{column}_std"]
        return [column] + [name for name in spread if measured(name)]

    columns = ["method", "bonafide_size"] + [c for c in ("bonafide_train", "holdout_size") if measured(c)]
    columns += with_spread("clean_acc")
    if measured("asr") or not measured("injection_success"):
        columns += with_spread("asr")
    columns += with_spread("ra") if measured("ra") else []
    columns += [column for column in ("injection_success", "robust_acc", *COUNT_NAMES) if measured(column)]
    return [*columns, "run", "config"]


BONAFIDE_HEADER = "bonafide (train/holdout)"


def markdown_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Markdown columns: the CSV's, with the split as 'train/holdout' and each interval as '[low, high]'."""
    columns = []
    for column in comparison_columns(rows):
        if column == "bonafide_size":
            columns.append(BONAFIDE_HEADER)
        elif column.endswith("_ci95_low"):
            columns.append(column.removesuffix("_ci95_low") + " 95% CI")
        elif column not in ("bonafide_train", "holdout_size") and not column.endswith("_ci95_high"):
            columns.append(column)
    return columns


def _display(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row with the Markdown-only columns: the bonafide split and the intervals as text."""
    shown = dict(row)
    train, holdout = row.get("bonafide_train"), row.get("holdout_size")
    split = f"{train}/{holdout}" if train is not None and holdout is not None else row.get("bonafide_size")
    shown[BONAFIDE_HEADER] = split
    for column in INTERVALS:
        low, high = row.get(f"{column}_ci95_low"), row.get(f"{column}_ci95_high")
        shown[f"{column} 95% CI"] = None if low is None else f"[{format_value(low)}, {format_value(high)}]"
    return shown


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A line naming the runs' folder and the interval, then the rows as a Markdown table ('-': not measured)."""
    root = next((row["log_root"] for row in rows if row.get("log_root")), None)
    header = f"Runs in {root}. " if root else ""
    header += "95% CI: Wilson score interval over the n images measured (n_clean, n_triggered)."
    return header + "\n\n" + markdown_table([_display(row) for row in rows], markdown_columns(rows))


def write_comparison(rows: Sequence[Mapping[str, Any]], out: str | Path) -> dict[str, Path]:
    """Atomically write `comparison.md` and `comparison.csv` into `out` (created if needed)."""
    folder = Path(out)
    markdown = atomic_write_text(folder / "comparison.md", comparison_table(rows) + "\n")
    table = write_csv(folder / "comparison.csv", rows, comparison_columns(rows))
    return {"md": markdown, "csv": table}


# ---------------------------------------------------------------------------------------------------- command
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mcrobust.analysis.report RUN_DIR [RUN_DIR ...] --out DIR`: print the table and save it."""
    parser = _Parser(prog="python -m mcrobust.analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or folders of runs)")
    parser.add_argument("--out", default=".", metavar="DIR", help="where comparison.md and comparison.csv go")
    args = parser.parse_args(argv)
    try:
        rows = collect_runs(args.runs)
    except MCRobustError as error:
        fail(str(error).splitlines()[0])
    print(comparison_table(rows))
    written = write_comparison(rows, args.out)
    print(f"written to {written['md']} and {written['csv']}")


if __name__ == "__main__":
    main()
