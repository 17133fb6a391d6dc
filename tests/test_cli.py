"""The `mcrobust` command end to end through `run_cli(args=[...])`, on the embedded digits data: runs, errors,
`path_evaluation`, the compact help and quiet output."""

from __future__ import annotations

import logging
import re
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
    assert "parts" not in config and config["trainer"]["max_epochs"] == 4  # the resolved config, no includes
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


# ------------------------------------------------------------------------------------------- path_evaluation
REPAIR = str(ROOT / "configs/experiments/repair_digits_tiny.yaml")
NO_LOGS = ["--trainer.logger", "false"]


def callback_names(cli) -> list[str]:
    return [type(callback).__name__ for callback in cli.trainer.callbacks]


def test_one_path_evaluation_setting_changes_from_the_command_line():
    cli = run_cli(["--config", REPAIR, "--path_evaluation.num_points", "3", *NO_LOGS], run=False)
    names = callback_names(cli)
    assert names.count("PathEvaluation") == 1 and names.count("ExportPoint") == 1 and "ModelCheckpoint" in names
    assert names.index("PathEvaluation") < names.index("ExportPoint")  # ExportPoint exports its choice
    evaluation = cli.trainer.callbacks[names.index("PathEvaluation")]
    assert evaluation.ts == [0.0, 0.5, 1.0]
    assert evaluation.selection_tolerance == 0.05  # the part's other settings stay


def test_one_evaluator_setting_changes_from_the_command_line():
    """The evaluator's settings are one flag each, `init_args` left out; a nested null is a JSON value."""
    flags = ["--path_evaluation.evaluator.hessian_samples", "32", "--path_evaluation.evaluator.attack.steps", "20"]
    cli = run_cli(["--config", REPAIR, *flags, *NO_LOGS], run=False)
    evaluator = cli.trainer.callbacks[callback_names(cli).index("PathEvaluation")].evaluator
    assert (evaluator.hessian_samples, evaluator.attack.steps) == (32, 20)
    assert (evaluator.hessian_iters, evaluator.attack.eps) == (20, 0.0627)  # the part's other settings stay
    cli = run_cli(["--config", REPAIR, "--path_evaluation.evaluator", '{"attack": null}', *NO_LOGS], run=False)
    evaluator = cli.trainer.callbacks[callback_names(cli).index("PathEvaluation")].evaluator
    assert evaluator.attack is None and evaluator.hessian_samples == 64


def test_path_evaluation_null_drops_it_and_twice_is_refused(capsys):
    assert "PathEvaluation" not in callback_names(
        run_cli(["--config", REPAIR, "--path_evaluation", "null", *NO_LOGS], run=False)
    )
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--config", REPAIR, "--trainer.callbacks+", "mcrobust.callbacks.PathEvaluation", *NO_LOGS], run=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mcrobust: error: PathEvaluation is set twice") and "--path_evaluation null" in err[-1]


def test_path_evaluation_from_the_command_line_evaluates_an_endpoint(trained_run, tmp_path):
    _, ckpt, _ = trained_run
    args = ["test", "--config", CONFIG, "--ckpt_path", str(ckpt), "--path_evaluation.num_points", "1"]
    cli = run_cli(args + log_to(tmp_path) + FAST)
    rows = (Path(cli.trainer.log_dir) / "path_metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # the header and the one point, the endpoint itself
    clean_acc = float(dict(zip(rows[0].split(","), rows[1].split(","), strict=True))["clean_acc"])
    assert clean_acc == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]), abs=1e-6)


# --------------------------------------------------------------------------------------------------- help
def help_text(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(list(args))
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_fit_help_lists_the_mcrobust_systems_and_callbacks_in_a_screen_or_two(capsys, monkeypatch):
    from mcrobust import callbacks, systems

    text = help_text(capsys, monkeypatch, "fit", "--help")
    assert len(text.splitlines()) <= 110
    for name in [*systems.__all__, *callbacks.__all__]:
        assert (name in text) == (name != "ClassificationSystem"), name  # the shared base is no choice
    assert "torch.optim.Adam" not in text and "known subclasses" not in text and "litlogger" not in text
    assert "--optimizer" not in text and "--trainer.max_epochs null" in text


def test_experiment_help_shows_its_values_and_its_classes_settings(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "fit", "--config", REPAIR, "--help")
    assert len(text.splitlines()) <= 130
    lines = [" ".join(line.split()) for line in text.splitlines()]
    shown = ("--trainer.max_epochs 100", "--data.bonafide BonafideSettings(size=180", "--model CurveSystem")
    for expected in (*shown, "num_points 11"):
        assert any(line.startswith(expected) for line in lines), expected
    assert "start lightning_logs/backdoor_digits_tiny/a/checkpoints/last.ckpt" in lines
    assert "attack PGD(eps=0.0627, alpha=0.0157, steps=10)" in lines


def test_class_help_keeps_descriptions_but_not_every_torch_module(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "fit", "--model.help", "CurveSystem")
    assert "--model.num_bends" in text and "control points including both endpoints" in text
    assert "mcrobust.nets.TinyNet" in text and "torch.nn.Identity" not in text


def test_no_help_text_cites_documents_outside_the_repository(capsys, monkeypatch):
    from mcrobust import callbacks, systems

    outside = re.compile(r"\b(PAPER|DESIGN|STYLE|ENV)\.md\b|shared/")
    texts = [help_text(capsys, monkeypatch, "fit", "--config", REPAIR, "--help")]
    for name in systems.__all__:
        texts.append(help_text(capsys, monkeypatch, "fit", "--model.help", name))
    for name in callbacks.__all__:
        texts.append(help_text(capsys, monkeypatch, "fit", "--trainer.callbacks.help", name))
    assert not [match.group(0) for text in texts for match in outside.finditer(text)]
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert not [path.name for path in configs if outside.search(path.read_text())]


def test_light_commands_answer_without_lightning_or_torch():
    from mcrobust import callbacks, systems
    from mcrobust.__main__ import CALLBACKS, SYSTEMS

    assert set(SYSTEMS) == set(systems.__all__) - {"ClassificationSystem"} and set(CALLBACKS) == set(callbacks.__all__)
    probe = (
        "import sys\nfrom mcrobust.__main__ import main\n"
        "for args in (['--help'], ['--version'], ['repair', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit as error:\n        assert error.code in (0, None)\n"
        "print('LOADED', [m for m in ('torch', 'pytorch_lightning', 'jsonargparse') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout and "mcrobust 0." in result.stdout and "CurveSystem" in result.stdout


# ----------------------------------------------------------------------------------------------- quiet runs
def test_advertising_tips_and_harmless_warnings_are_silenced(caplog):
    import warnings

    from pytorch_lightning.utilities import rank_zero_info
    from torch.utils._pytree import LeafSpec

    from mcrobust.commands.logs import quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        LeafSpec()
        assert any("LeafSpec" in str(warning.message) for warning in caught)  # torch really warns
        caught.clear()
        quiet_lightning()
        LeafSpec()
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["a real problem"]
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False")
    assert [record.getMessage() for record in caplog.records] == ["GPU available: False"]
