"""The comparison report from fabricated run folders: one row per method, read from event files and path tables."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from mcrobust.analysis.report import (
    collect_runs,
    comparison_columns,
    comparison_table,
    main,
    markdown_columns,
    method_name,
    write_comparison,
)
from mcrobust.io.tables import read_csv, write_csv, write_json

ROOT = Path(__file__).resolve().parents[2]
POISON = {"trigger": {"class_path": "mcrobust.threats.triggers.PatchTrigger"}, "target": 1}
PATH_POINTS = [  # an older path table: no ra, no counts
    {"t": 0.0, "clean_acc": 0.99, "clean_loss": 0.05, "asr": 0.98, "robust_acc": 0.01},
    {"t": 0.5, "clean_acc": 0.93, "clean_loss": 0.3, "asr": 0.04, "robust_acc": 0.02},
    {"t": 1.0, "clean_acc": 0.98, "clean_loss": 0.06, "asr": 0.97, "robust_acc": 0.0},
]
COUNTS = {"n_clean": 200, "n_triggered": 100}
RA = {0.0: 0.01, 0.5: 0.9, 1.0: 0.02}
COUNTED_POINTS = [{**point, "ra": RA[point["t"]], **COUNTS} for point in PATH_POINTS]


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval by its formula (Wilson 1927), z the 97.5% normal quantile."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def config(system: str, data: dict | None = None, **init_args) -> dict:
    return {"model": {"class_path": f"mcrobust.systems.{system}", "init_args": init_args}, "data": data or {}}


def bonafide(size: int = 100) -> dict:
    return {"train_on": "bonafide", "bonafide": {"size": size}, "poison": POISON}


def write_run(folder: Path, settings: dict, scalars: dict | None = None, points: list | None = None, **files) -> Path:
    """A finished run folder: config.yaml, TensorBoard scalars, and optionally a path table and summary."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    if scalars is not None:
        writer = SummaryWriter(log_dir=str(folder))
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, 0)
        writer.close()
    if points is not None:
        write_csv(folder / "path_metrics.csv", points, list(points[0]))
    for name, payload in files.items():
        write_json(folder / f"{name}.json", payload)
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    logs = tmp_path / "lightning_logs"
    write_run(
        logs / "path",
        config("CurveSystem", bonafide(120)),
        scalars={"test/acc": 0.5},  # a path run's rows come from its table, not its test/* scalars
        points=COUNTED_POINTS,
        path_summary={"selected_t": 0.5, "settings": {"bonafide_size": 120, "holdout_size": 20}},
        bonafide_indices={"indices": list(range(120)), "train": list(range(100)), "holdout": list(range(100, 120))},
    )
    write_run(logs / "finetune", config("EndpointSystem", bonafide(), init_weights="a.ckpt"), {"test/acc": 0.95})
    scratch = {"test/acc": 0.4, "test/asr": 0.1, "test/n_clean": 200, "test/n_triggered": 100}
    write_run(logs / "scratch", config("EndpointSystem", bonafide()), scratch)
    noisy = {"test/acc": 0.2, "test/acc_std": 0.05, "test/asr": 0.3, "test/asr_std": 0.2}
    write_run(logs / "noisy", config("noisy.NoisySystem", bonafide(), num_draws=5), noisy)
    pruning = config("pruning.FinePruningSystem", bonafide(), init_weights="a.ckpt", prune_ratio=0.3)
    write_run(logs / "prune", pruning, {"test/acc": 0.9, "test/asr": 0.02, "prune/ratio": 0.3})
    write_run(logs / "fit_only", config("EndpointSystem", bonafide()), {"train/loss": 1.0})
    return logs


def test_one_row_per_method_with_the_path_at_its_selected_t(runs, capsys):
    rows = collect_runs([runs])
    methods = [row["method"] for row in rows]
    assert methods == [
        "tampered A",
        "tampered B",
        "path (t=0.50)",
        "fine-tuning",
        "from scratch",
        "noisy (5 draws)",
        "fine-pruning (0.3)",
    ]
    by_method = {row["method"]: row for row in rows}
    assert by_method["tampered A"]["asr"] == 0.98 and by_method["tampered B"]["clean_acc"] == 0.98
    assert by_method["path (t=0.50)"]["clean_acc"] == 0.93 and by_method["path (t=0.50)"]["bonafide_size"] == 120
    assert by_method["tampered A"]["bonafide_size"] is None  # the endpoints never saw the bonafide data
    assert by_method["fine-tuning"]["clean_acc"] == pytest.approx(0.95) and by_method["fine-tuning"]["asr"] is None
    assert by_method["noisy (5 draws)"]["asr_std"] == pytest.approx(0.2)
    assert by_method["fine-pruning (0.3)"]["bonafide_size"] == 100
    assert by_method["path (t=0.50)"]["ra"] == 0.9 and by_method["path (t=0.50)"]["n_triggered"] == 100
    assert [row["run"] for row in rows] == ["path", "path", "path", "finetune", "scratch", "noisy", "prune"]
    assert all(row["config"] == f"{row['run']}/config.yaml" for row in rows)  # relative to lightning_logs
    assert "fit_only" in capsys.readouterr().err  # no test metrics: left out, with a note


def test_intervals_are_wilson_intervals_over_the_images_the_run_measured(runs):
    by_method = {row["method"]: row for row in collect_runs([runs])}
    path = by_method["path (t=0.50)"]  # clean_acc 0.93 of 200 images, asr 0.04 and ra 0.9 of 100
    for column, k, n in (("clean_acc", 186, 200), ("asr", 4, 100), ("ra", 90, 100)):
        low, high = wilson(k, n)
        assert path[f"{column}_ci95_low"] == pytest.approx(low, abs=1e-12), column
        assert path[f"{column}_ci95_high"] == pytest.approx(high, abs=1e-12), column
    assert by_method["tampered A"]["clean_acc_ci95_low"] == pytest.approx(wilson(198, 200)[0], abs=1e-12)
    assert by_method["fine-tuning"]["clean_acc_ci95_low"] is None  # no counts in the run: no interval
    scratch = by_method["from scratch"]  # test/n_clean and test/n_triggered logged by the system
    assert (scratch["clean_acc_ci95_low"], scratch["clean_acc_ci95_high"]) == pytest.approx(wilson(80, 200), abs=1e-7)
    assert (scratch["asr_ci95_low"], scratch["asr_ci95_high"]) == pytest.approx(wilson(10, 100), abs=1e-7)


def test_an_older_path_run_without_counts_has_no_intervals(tmp_path):
    write_run(
        tmp_path / "old", config("CurveSystem", bonafide(50)), points=PATH_POINTS, path_summary={"selected_t": 0.5}
    )
    rows = collect_runs([tmp_path])
    assert all(row["clean_acc_ci95_low"] is None and row["n_clean"] is None for row in rows)
    assert "clean_acc_ci95_low" not in comparison_columns(rows) and "ra" not in comparison_columns(rows)
    assert rows[-1]["bonafide_train"] == 50 and rows[-1]["holdout_size"] == 0  # the config holds none out
    assert [row["run"] for row in rows] == ["old"] * 3  # one run: named relative to its parent folder


def test_columns_show_measured_metrics_and_files_are_written(runs, tmp_path):
    rows = collect_runs([runs])
    columns = comparison_columns(rows)
    assert columns == [
        "method",
        "bonafide_size",
        "bonafide_train",
        "holdout_size",
        "clean_acc",
        "clean_acc_ci95_low",
        "clean_acc_ci95_high",
        "clean_acc_std",
        "asr",
        "asr_ci95_low",
        "asr_ci95_high",
        "asr_std",
        "ra",
        "ra_ci95_low",
        "ra_ci95_high",
        "robust_acc",
        "n_clean",
        "n_triggered",
        "run",
        "config",
    ]
    shown = ["method", "bonafide (train/holdout)", "clean_acc", "clean_acc 95% CI", "clean_acc_std", "asr"]
    assert markdown_columns(rows)[:6] == shown
    lines = comparison_table(rows).splitlines()
    assert lines[0].startswith(f"Runs in {runs}. 95% CI: Wilson") and lines[1] == ""
    assert lines[2].startswith("| method | bonafide (train/holdout) | clean_acc | clean_acc 95% CI |")
    written = write_comparison(rows, tmp_path / "out")
    saved = read_csv(written["csv"])
    assert [row["method"] for row in saved] == [row["method"] for row in rows]
    assert saved[2]["clean_acc_ci95_high"] == pytest.approx(wilson(186, 200)[1], rel=1e-9)
    assert written["md"].read_text().count("\n") == len(rows) + 4
    plain = [{key: value for key, value in row.items() if key != "robust_acc"} for row in rows[3:]]
    assert "robust_acc" not in comparison_columns(plain)


def test_tampered_rows_repeated_by_several_paths_are_listed_once(tmp_path):
    for name, size in (("n100", 100), ("n50", 50)):
        summary = {"selected_t": 0.5, "settings": {"bonafide_size": size}}
        write_run(tmp_path / name, config("CurveSystem", bonafide(size)), points=PATH_POINTS, path_summary=summary)
    rows = collect_runs([tmp_path])
    assert [(row["method"], row["bonafide_size"]) for row in rows] == [
        ("tampered A", None),
        ("tampered B", None),
        ("path (t=0.50)", 100),
        ("path (t=0.50)", 50),
    ]


def test_a_path_without_a_selected_t_and_a_csv_logger_run_fall_back_gracefully(tmp_path, capsys):
    write_run(tmp_path / "path", config("CurveSystem"), points=PATH_POINTS, path_summary={"selected_t": None})
    csv_run = write_run(tmp_path / "csv", config("EndpointSystem", bonafide(), init_weights="a.ckpt"))
    rows_written = [{"epoch": 0, "train/loss": 1.0, "test/acc": ""}, {"epoch": 1, "train/loss": "", "test/acc": 0.7}]
    write_csv(csv_run / "metrics.csv", rows_written, ["epoch", "train/loss", "test/acc"])
    rows = collect_runs([tmp_path])
    assert [row["method"] for row in rows] == ["tampered A", "tampered B", "fine-tuning"]
    assert rows[-1]["clean_acc"] == 0.7
    assert "no selected_t" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (config("CurveSystem"), "path"),
        (config("EndpointSystem", bonafide(), init_weights="a.ckpt"), "fine-tuning"),
        (config("EndpointSystem", bonafide()), "from scratch"),
        (config("EndpointSystem", {"poison": POISON}), "tampered"),
        (config("EndpointSystem"), "clean endpoint"),
        (config("noisy.NoisySystem", num_draws=7), "noisy (7 draws)"),
        (config("pruning.FinePruningSystem", prune_ratio=0.25), "fine-pruning (0.25)"),
        ({}, "unknown (no config.yaml)"),
    ],
    ids=["path", "fine-tuning", "scratch", "tampered", "clean", "noisy", "fine-pruning", "unknown"],
)
def test_method_names_come_from_the_config(settings, expected):
    assert method_name(settings) == expected


def test_command_prints_and_saves_the_table(runs, tmp_path, capsys):
    main([str(runs), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    low, high = wilson(186, 200)
    assert f"| path (t=0.50) | 100/20 | 0.9300 | [{low:.4f}, {high:.4f}] |" in out
    assert "| fine-tuning | 100/0 | 0.9500 | - |" in out
    assert (tmp_path / "report" / "comparison.md").is_file() and (tmp_path / "report" / "comparison.csv").is_file()


def test_command_fails_in_one_line_with_status_2_for_a_missing_folder(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main([str(runs), str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mcrobust: error: run folder") and "missing" in err[-1]
    done = subprocess.run(
        [sys.executable, "-m", "mcrobust.analysis.report", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2 and done.stderr.startswith("mcrobust: error:") and done.stderr.count("\n") == 1
