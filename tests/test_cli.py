"""The `mcrobust` command end to end through `run_cli(args=[...])`, on the embedded digits data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mcrobust.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/experiments/endpoint_digits_tiny.yaml")
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def fit_args(tmp_path: Path, epochs: int = 4) -> list[str]:
    return ["fit", "--config", CONFIG, "--trainer.max_epochs", str(epochs)] + log_to(tmp_path)


def log_to(path: Path) -> list[str]:
    """Keep test runs out of the repository's lightning_logs/."""
    return ["--trainer.default_root_dir", str(path), "--trainer.logger.init_args.save_dir", str(path)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short fit of the tiny net on digits, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    cli = run_cli(fit_args(root) + FAST)
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)
    return root, ckpt, Path(cli.trainer.log_dir)


def test_fit_then_test_reaches_high_accuracy(trained_run):
    root, ckpt, _ = trained_run
    cli = run_cli(["test", "--config", CONFIG, "--ckpt_path", str(ckpt)] + log_to(root) + FAST)
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/acc"]) > 0.9
    assert float(metrics["test/loss"]) < 0.5


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_system(trained_run):
    from mcrobust.systems import EndpointSystem

    _, ckpt, _ = trained_run
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "net.classifier.weight" in state["state_dict"]
    system = EndpointSystem.load_from_checkpoint(ckpt)
    torch.testing.assert_close(system.net.classifier.weight, state["state_dict"]["net.classifier.weight"])


def test_normalize_takes_the_data_statistics(trained_run):
    from mcrobust.data.datamodules import RobustDataModule

    _, ckpt, _ = trained_run
    datamodule = RobustDataModule()
    datamodule.setup("fit")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(state["net.features.0.mean"].flatten(), torch.tensor(datamodule.mean))


def test_saved_config_reruns_as_is(trained_run, tmp_path):
    _, _, log_dir = trained_run
    saved = log_dir / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    assert config["model"]["class_path"] == "mcrobust.systems.EndpointSystem"
    cli = run_cli(["validate", "--config", str(saved)] + log_to(tmp_path) + FAST)
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.05  # a fresh net, but the config is complete


def test_print_config_lists_the_data_module(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", CONFIG, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["dataset"] == "digits" and printed["trainer"]["inference_mode"] is False


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--data.batch_sise", "3"], "batch_sise"),
        (["--model.init_args.net.init_args.widht", "3"], "widht"),
        (["--data.batch_size", "abc"], "data.batch_size"),
        (["--data.batch_size", "0"], "batch_size must be >= 1"),
    ],
    ids=["unknown-data-key", "unknown-net-key", "wrong-type", "impossible-size"],
)
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys, extra, fragment):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(fit_args(tmp_path) + extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and err[-1].startswith("mcrobust: error:") and fragment in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_unknown_key_in_a_yaml_file_names_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_sise: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(fit_args(tmp_path) + ["--config", str(bad)])
    assert exit_info.value.code == 2
    assert "batch_sise" in capsys.readouterr().err


def test_python_dash_m_mcrobust_shows_help():
    result = subprocess.run([sys.executable, "-m", "mcrobust", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "fit" in result.stdout and "test" in result.stdout
