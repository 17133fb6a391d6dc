"""The demo's chain on a reduced setting, through the real CLI: the repair removes the backdoor, keeps accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mcrobust.cli import run_cli
from mcrobust.io.tables import read_csv
from mcrobust.nets import TinyNet

ROOT = Path(__file__).resolve().parents[1]
REPAIR = str(ROOT / "configs/experiments/repair_digits_tiny.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def logs(tmp_path: Path, version: str) -> list[str]:
    return [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        version,
    ]


def test_path_repair_removes_the_backdoor_and_keeps_clean_accuracy(tiny_endpoints, tmp_path):
    a, b = str(tiny_endpoints["a"]), str(tiny_endpoints["b"])
    run_cli(
        ["fit", "--config", REPAIR, "--model.init_args.start", a, "--model.init_args.end", b]
        + logs(tmp_path, "path")
        + QUIET
    )
    ckpt = tmp_path / "repair_digits_tiny" / "path" / "checkpoints" / "last.ckpt"
    run_cli(["test", "--config", REPAIR, "--ckpt_path", str(ckpt)] + logs(tmp_path, "test") + QUIET)
    out = tmp_path / "repair_digits_tiny" / "test"
    rows = {row["t"]: row for row in read_csv(out / "path_metrics.csv")}
    summary = json.loads((out / "path_summary.json").read_text())
    assert len(rows) == 11 and rows[0.0]["asr"] >= 0.95 and rows[1.0]["asr"] >= 0.95
    chosen = rows[summary["selected_t"]]
    endpoint_acc = min(rows[0.0]["clean_acc"], rows[1.0]["clean_acc"])
    assert 0.0 < summary["selected_t"] < 1.0
    assert chosen["asr"] <= 0.10, (summary["selected_t"], chosen)
    assert chosen["clean_acc"] >= endpoint_acc - 0.03, (summary["selected_t"], chosen)
    assert chosen["robust_acc"] is not None and chosen["hessian_top_eig"] > 0
    exported = out / f"repaired_t{summary['selected_t']:.3f}.pt"
    net = TinyNet(width=16)
    net.load_state_dict(torch.load(exported, weights_only=True))
