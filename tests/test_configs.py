"""Every experiment file in configs/ is complete and parses, alone and with each hardware overlay."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mcrobust.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
OVERLAYS = sorted((ROOT / "configs" / "overlays").glob("*.yaml"))


def print_config(capsys, *configs: Path) -> dict:
    args = ["fit"] + [item for config in configs for item in ("--config", str(config))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_config_parses_and_names_its_own_log_folder(config, capsys):
    printed = print_config(capsys, config)
    assert printed["model"]["class_path"].startswith("mcrobust.systems.")
    assert printed["data"]["dataset"] in ("digits", "cifar10", "svhn", "image_folder")
    assert printed["trainer"]["logger"]["init_args"]["name"] == config.stem
    assert printed["trainer"]["inference_mode"] is False


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.stem for p in OVERLAYS])
def test_overlays_combine_with_an_experiment(overlay, capsys):
    printed = print_config(capsys, ROOT / "configs/experiments/repair_cifar10_vgg16.yaml", overlay)
    expected = yaml.safe_load(overlay.read_text())["trainer"]
    for key, value in expected.items():
        assert printed["trainer"][key] == value


def test_there_is_a_config_for_every_paper_setting():
    names = {p.stem for p in EXPERIMENTS}
    for dataset, net in (("cifar10", "vgg16"), ("cifar10", "preresnet26"), ("svhn", "preresnet26"), ("digits", "tiny")):
        assert f"backdoor_{dataset}_{net}" in names and f"repair_{dataset}_{net}" in names
    assert {"adversarial_cifar10_vgg16", "adversarial_digits_tiny", "robustness_path_cifar10_vgg16"} <= names
    assert {"injection_cifar10_vgg16", "injection_cifar10_preresnet26", "injection_digits_tiny"} <= names
