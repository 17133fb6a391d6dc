"""The same seed gives the same path table: fit a tiny curve and sweep it, twice, on the CPU."""

from __future__ import annotations

from pathlib import Path

from mcrobust.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/experiments/repair_digits_tiny.yaml")
SMALL_SWEEP = """
path_evaluation:
  num_points: 3
  evaluator:
    attack:
      class_path: mcrobust.threats.evasion.PGD
      init_args:
        eps: 0.0627
        alpha: 0.0157
        steps: 2
    hessian_samples: 6
    hessian_iters: 4
"""


def common_args(tmp_path: Path, logs: Path) -> list[str]:
    overlay = tmp_path / "small_sweep.yaml"
    overlay.write_text(SMALL_SWEEP)
    return [
        "--config",
        CONFIG,
        "--config",
        str(overlay),
        "--data.bonafide.size",
        "60",
        "--data.bonafide.holdout_size",
        "20",
        "--data.eval_size",
        "60",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(logs),
        "--trainer.logger.init_args.save_dir",
        str(logs),
    ]


def fit_and_sweep(tmp_path: Path, logs: Path, endpoints: dict[str, Path]) -> Path:
    """Train a path for 2 epochs, then `mcrobust test` it; return the folder holding the path table."""
    ends = ["--model.init_args.start", str(endpoints["a"]), "--model.init_args.end", str(endpoints["b"])]
    fit = run_cli(["fit", *common_args(tmp_path, logs), *ends, "--trainer.max_epochs", "2"])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    test = run_cli(["test", *common_args(tmp_path, logs), "--ckpt_path", ckpt])
    return Path(test.trainer.log_dir)


def test_the_same_seed_gives_an_identical_path_table(tmp_path, tiny_endpoints):
    first = fit_and_sweep(tmp_path, tmp_path / "first", tiny_endpoints)
    second = fit_and_sweep(tmp_path, tmp_path / "second", tiny_endpoints)
    table = (first / "path_metrics.csv").read_text()
    assert table == (second / "path_metrics.csv").read_text()
    assert len(table.strip().splitlines()) == 4  # the header and t = 0, 0.5, 1
    exported = sorted(p.name for p in first.glob("repaired_t*.safetensors"))
    assert exported and exported == sorted(p.name for p in second.glob("repaired_t*.safetensors"))
    assert (first / exported[0]).read_bytes() == (second / exported[0]).read_bytes()
