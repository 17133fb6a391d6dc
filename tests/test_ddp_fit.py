"""A 2-process CPU DDP fit (gloo, ddp_spawn) through the real CLI on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcrobust.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/experiments/endpoint_digits_tiny.yaml")


@pytest.mark.ddp
def test_two_process_cpu_fit_trains_and_evaluates(tmp_path):
    args = ["fit", "--config", CONFIG, "--trainer.max_epochs", "6", "--trainer.default_root_dir", str(tmp_path)]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = run_cli(args)
    assert cli.trainer.world_size == 2
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.5
    assert Path(cli.trainer.checkpoint_callback.best_model_path).is_file()
