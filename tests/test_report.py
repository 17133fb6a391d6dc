"""The comparison report from fabricated run folders: one row per method, read from event files and path tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from mcrobust.report import collect_runs, comparison_columns, comparison_table, main, method_name, write_comparison
from mcrobust.tables import read_csv, write_csv, write_json

ROOT = Path(__file__).resolve().parents[1]
POISON = {"trigger": {"class_path": "mcrobust.data.poisoning.PatchTrigger"}, "target": 1}
PATH_POINTS = [
    {"t": 0.0, "clean_acc": 0.99, "clean_loss": 0.05, "asr": 0.98, "robust_acc": 0.01},
    {"t": 0.5, "clean_acc": 0.93, "clean_loss": 0.3, "asr": 0.04, "robust_acc": 0.02},
    {"t": 1.0, "clean_acc": 0.98, "clean_loss": 0.06, "asr": 0.97, "robust_acc": 0.0},
]


def config(system: str, data: dict | None = None, **init_args) -> dict:
    return {"model": {"class_path": f"mcrobust.systems.{system}", "init_args": init_args}, "data": data or {}}


def bonafide(size: int = 100) -> dict:
    return {"train_on": "bonafide", "bonafide_size": size, "poison": POISON}


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
        scalars={"test/acc": 0.5},  # the curve's own test metrics at val_t are not its row
        points=PATH_POINTS,
        path_summary={"selected_t": 0.5, "settings": {"bonafide_size": 120}},
        bonafide_indices={"indices": list(range(120))},
    )
    write_run(logs / "finetune", config("EndpointSystem", bonafide(), init_weights="a.ckpt"), {"test/acc": 0.95})
    write_run(logs / "scratch", config("EndpointSystem", bonafide()), {"test/acc": 0.4, "test/asr": 0.1})
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
    assert all(row["run"] and row["config"].endswith("config.yaml") for row in rows)
    assert "fit_only" in capsys.readouterr().err  # no test metrics: left out, with a note


def test_columns_show_measured_metrics_and_files_are_written(runs, tmp_path):
    rows = collect_runs([runs])
    columns = comparison_columns(rows)
    assert columns == [
        "method",
        "bonafide_size",
        "clean_acc",
        "clean_acc_std",
        "asr",
        "asr_std",
        "robust_acc",
        "run",
        "config",
    ]
    assert comparison_table(rows).splitlines()[0].startswith("| method | bonafide_size | clean_acc |")
    written = write_comparison(rows, tmp_path / "out")
    assert [row["method"] for row in read_csv(written["csv"])] == [row["method"] for row in rows]
    assert written["md"].read_text().count("\n") == len(rows) + 2
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
    assert "| path (t=0.50) | 120 | 0.9300 |" in out
    assert (tmp_path / "report" / "comparison.md").is_file() and (tmp_path / "report" / "comparison.csv").is_file()


def test_command_fails_in_one_line_with_status_2_for_a_missing_folder(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main([str(runs), str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mcrobust: error: run folder") and "missing" in err[-1]
    done = subprocess.run(
        [sys.executable, "-m", "mcrobust.report", str(tmp_path / "missing")], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2 and done.stderr.startswith("mcrobust: error:") and done.stderr.count("\n") == 1
