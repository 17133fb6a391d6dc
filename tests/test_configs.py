"""Every experiment in configs/ parses through the CLI, alone and with each hardware overlay, composed from parts.

The experiments were complete files until commit BEFORE_PARTS; since then they list the parts they share. Each one
resolves to exactly the config its complete file gave (`--print_config` of both), apart from the changes listed in
DELIBERATE, and the `parts:` mechanism itself (order, overrides, appends, bad includes) is tested on small files.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcrobust.cli import resolved_config, run_cli
from mcrobust.commands.moved import moved_paths
from mcrobust.commands.parts import composed_settings, config_chain, expand_config_args
from mcrobust.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
OVERLAYS = sorted((ROOT / "configs" / "overlays").glob("*.yaml"))
PARTS = sorted((ROOT / "configs" / "parts").rglob("*.yaml"))
BEFORE_PARTS = "62b72b92e18b992f99367d6c79ec72f55e7110c5"
"""The last commit whose experiment files were complete, without `parts:`."""
JPEG_RUNS = "lightning_logs/cifar10_jpeg_cpu"
DELIBERATE = {
    # the noisy baseline trains nothing, so its epoch length has no effect; it now shares the path's data settings
    **{
        f"baseline_noisy_{name}": {
            "data.epoch_samples": (None, samples),
            # its draws are now evaluated by a callback, as a path's are (issue 15)
            "trainer.callbacks": (None, [{"class_path": "mcrobust.callbacks.noisy_evaluation.NoisyEvaluation"}]),
        }
        for name, samples in (("cifar10_vgg16", 10000), ("svhn_preresnet26", 26032), ("digits_tiny", 160))
    },
    # its endpoints now have their own config (backdoor_cifar10jpeg_preresnet20_cpu), hence their own log folder
    "repair_cifar10jpeg_preresnet20_cpu": {
        f"model.init_args.{key}": (
            f"{JPEG_RUNS}/backdoor_cifar10_preresnet26/{end}/checkpoints/last.ckpt",
            f"{JPEG_RUNS}/backdoor_cifar10jpeg_preresnet20_cpu/{end}/checkpoints/last.ckpt",
        )
        for key, end in (("start", "a"), ("end", "b"))
    },
}
"""Settings whose resolved value changed on purpose when the files were split into parts: (before, after)."""
JPEG_DATA = ["--data.dataset", "image_folder", "--data.root", "data/cifar10-jpeg", "--data.download", "false"]
JPEG_DATA += ["--data.num_workers", "0"]
JPEG_NET = ["--model.init_args.net", "mcrobust.nets.PreResNet", "--model.init_args.net.init_args.depth", "20"]
REPLACED = {
    # experiments that scripts/cifar10_jpeg_cpu.sh used to build from other files and flags: (file, its flags)
    "backdoor_cifar10jpeg_preresnet20_cpu": (
        "backdoor_cifar10_preresnet26",
        [*JPEG_DATA, *JPEG_NET[2:], "--trainer.max_epochs", "4"],
    ),
    "baseline_finetune_cifar10jpeg_preresnet20_cpu": (
        "baseline_finetune_cifar10_vgg16",
        [*JPEG_DATA, *JPEG_NET, "--data.eval_size", "2000", "--trainer.max_epochs", "20"],
    ),
}
for name, (former, _) in REPLACED.items():
    DELIBERATE[name] = {"trainer.logger.init_args.name": (former, name)}
DELIBERATE["baseline_finetune_cifar10jpeg_preresnet20_cpu"]["model.init_args.init_weights"] = (
    "lightning_logs/backdoor_cifar10_vgg16/a/checkpoints/last.ckpt",  # the script gave its own --init_weights
    f"{JPEG_RUNS}/backdoor_cifar10jpeg_preresnet20_cpu/a/checkpoints/last.ckpt",
)
_RESOLVED: dict[Path, dict] = {}


def printed(config: Path) -> dict:
    """`mcrobust fit --config <config> --print_config`, run once per file."""
    if config not in _RESOLVED:
        _RESOLVED[config] = resolved_config(config)
    return _RESOLVED[config]


def print_config(capsys, *configs: Path) -> dict:
    args = ["fit"] + [item for config in configs for item in ("--config", str(config))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_config_parses_and_names_its_own_log_folder(config):
    resolved = printed(config)
    assert resolved["model"]["class_path"].startswith("mcrobust.systems.")
    assert resolved["data"]["dataset"] in ("digits", "cifar10", "svhn", "image_folder")
    assert resolved["trainer"]["logger"]["init_args"]["name"] == config.stem
    assert resolved["trainer"]["inference_mode"] is False
    assert "parts" not in resolved


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
    assert {"adaptive_backdoor_digits_tiny", "adversarial_cifar10_vgg16", "robustness_path_cifar10_vgg16"} <= names
    assert {"injection_cifar10_vgg16", "injection_cifar10_preresnet26", "injection_digits_tiny"} <= names


# --------------------------------------------------------------------------- the same configs as the complete files
def file_before_parts(config: Path) -> str | None:
    """The experiment file as it was at BEFORE_PARTS, or None (no git, a shallow clone, a newer experiment)."""
    try:
        shown = subprocess.run(
            ["git", "show", f"{BEFORE_PARTS}:{config.relative_to(ROOT).as_posix()}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shown.stdout if shown.returncode == 0 else None


def same_classes(config: object) -> object:
    """`config` with every class_path as the module and name of the class it imports (two paths, one class)."""
    if isinstance(config, dict):
        return {key: class_name(value) if key == "class_path" else same_classes(value) for key, value in config.items()}
    if isinstance(config, list):
        return [same_classes(item) for item in config]
    return config


def class_name(path: str) -> str:
    module, _, name = path.rpartition(".")
    imported = getattr(importlib.import_module(module), name)
    return f"{imported.__module__}.{imported.__qualname__}"


def as_complete_file_had_it(config: dict) -> dict:
    """A resolved config with `path_evaluation` back in the callback list, where the complete files kept it."""
    config = dict(config)
    evaluation = config.pop("path_evaluation", None)
    if evaluation is not None:
        trainer = config["trainer"] = dict(config["trainer"])
        callbacks = list(trainer["callbacks"] or [])
        exports = [i for i, callback in enumerate(callbacks) if callback["class_path"].endswith("ExportPoint")]
        callbacks.insert(exports[0] if exports else len(callbacks), evaluation)
        trainer["callbacks"] = callbacks
    return same_classes(config)


BONAFIDE_KEYS = {
    "bonafide_size": "size",
    "bonafide_fraction": "fraction",
    "bonafide_seed": "seed",
    "bonafide_pool": "pool",
    "bonafide_indices_path": "indices_path",
    "holdout_size": "holdout_size",
}
"""The complete files' flat bonafide keys of `data:` and their names in today's `data.bonafide:` section."""


def with_bonafide_section(text: str) -> str:
    """A complete file's YAML with its flat `data.bonafide_*` and `data.holdout_size` keys in `data.bonafide:`."""
    config = yaml.safe_load(text)
    data = config.get("data") or {}
    bonafide = {new: data.pop(old) for old, new in BONAFIDE_KEYS.items() if old in data}
    if bonafide:
        data["bonafide"] = bonafide
    return yaml.safe_dump(config, sort_keys=False)


EVALUATOR_SETTINGS = ("attack", "hessian_samples", "hessian_iters", "hessian_tol", "hessian_top_k", "seed")
"""PathEvaluation's settings that it passed through to its PointEvaluator until it took the evaluator itself."""


def with_evaluator(text: str) -> str:
    """A complete file's YAML with its PathEvaluation's attack and Hessian settings in `evaluator:`, now theirs."""
    config = yaml.safe_load(text)
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        init_args = callback.get("init_args") or {}
        if callback.get("class_path", "").endswith("PathEvaluation") and set(EVALUATOR_SETTINGS) & set(init_args):
            moved = {key: init_args.pop(key) for key in EVALUATOR_SETTINGS if key in init_args}
            init_args["evaluator"] = {"class_path": "mcrobust.analysis.evaluation.PointEvaluator", "init_args": moved}
    return yaml.safe_dump(config, sort_keys=False)


def with_deliberate_changes(config: dict, name: str) -> dict:
    for key, (before, after) in DELIBERATE.get(name, {}).items():
        *parents, last = key.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        assert section[last] == before, f"{name}: {key} was {section[last]!r}, expected {before!r} before parts"
        section[last] = after
    return config


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_composed_experiment_resolves_to_what_its_complete_file_gave(config, tmp_path):
    former, flags = REPLACED.get(config.stem, (config.stem, []))
    complete = file_before_parts(config.with_stem(former))
    if complete is None:
        pytest.skip(f"no {former}.yaml at commit {BEFORE_PARTS[:7]} (git history unavailable or a newer experiment)")
    old = tmp_path / f"{former}.yaml"
    old.write_text(with_evaluator(with_bonafide_section(moved_paths(complete))))  # the 0.2 layout's names
    before = with_deliberate_changes(as_complete_file_had_it(resolved_config(old, args=flags)), config.stem)
    assert as_complete_file_had_it(printed(config)) == before


def test_experiment_files_hold_under_40_percent_of_their_former_lines():
    before = {config: file_before_parts(config) for config in EXPERIMENTS}
    former = [config for config, text in before.items() if text is not None]
    if len(former) < 37:
        pytest.skip(f"the 37 complete files of commit {BEFORE_PARTS[:7]} are not available")
    now = sum(len(config.read_text().splitlines()) for config in former)
    assert now < 0.4 * sum(len(str(before[config]).splitlines()) for config in former)
    assert max(len(config.read_text().splitlines()) for config in EXPERIMENTS) <= 35  # new ones are as short


def test_every_part_is_used_by_an_experiment():
    used = {part for config in EXPERIMENTS for part in config_chain(config)[:-1]}
    assert set(PARTS) - used == set()


def test_an_experiment_runs_as_pasted_through_python_dash_m_mcrobust():
    command = [sys.executable, "-m", "mcrobust", "fit", "--config", "configs/experiments/repair_digits_tiny.yaml"]
    result = subprocess.run([*command, "--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout) == printed(ROOT / "configs/experiments/repair_digits_tiny.yaml")


# ------------------------------------------------------------------------------------------------ the parts mechanism
def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_parts_apply_in_order_before_the_file_each_once(tmp_path):
    base = write(tmp_path, "parts/base.yaml", "trainer: {max_epochs: 3}\n")
    a = write(tmp_path, "parts/a.yaml", "parts: [base.yaml]\ntrainer: {max_epochs: 4}\n")
    b = write(tmp_path, "parts/b.yaml", "parts: [base.yaml]\ntrainer: {log_every_n_steps: 7}\n")
    top = write(tmp_path, "exp/top.yaml", "parts: [../parts/a.yaml, ../parts/b.yaml]\nseed_everything: 5\n")
    assert config_chain(top) == [base.resolve(), a.resolve(), b.resolve(), top.resolve()]  # base not repeated after a
    args = expand_config_args(["fit", "--config", str(top), "--trainer.max_epochs", "9"])
    assert args[:3] == ["fit", "--config", str(base.resolve())]
    assert args[-2:] == ["--trainer.max_epochs", "9"] and args.count("--config") == 4
    assert composed_settings(top) == {"trainer": {"max_epochs": 4, "log_every_n_steps": 7}, "seed_everything": 5}


def test_later_files_and_flags_override_parts_and_plus_appends(tmp_path):
    repair = ROOT / "configs/experiments/repair_digits_tiny.yaml"
    extra = write(tmp_path, "extra.yaml", "trainer:\n  callbacks+:\n    - class_path: mcrobust.callbacks.Speedups\n")
    resolved = resolved_config(repair, extra, args=["--data.bonafide.size", "90", "--path_evaluation.num_points", "3"])
    names = [callback["class_path"].rsplit(".", 1)[-1] for callback in resolved["trainer"]["callbacks"]]
    assert names == ["ModelCheckpoint", "ExportPoint", "Speedups"]
    assert resolved["data"]["bonafide"]["size"] == 90 and resolved["data"]["bonafide"]["holdout_size"] == 40
    assert resolved["path_evaluation"]["init_args"]["num_points"] == 3
    evaluator = resolved["path_evaluation"]["init_args"]["evaluator"]["init_args"]
    assert evaluator["hessian_samples"] == 64  # the part's other settings stay


@pytest.mark.parametrize(
    ("files", "fragments"),
    [
        ({"exp.yaml": "parts: [parts/missing.yaml]\n"}, ("exp.yaml", "part parts/missing.yaml not found", "parts:")),
        ({"exp.yaml": "parts: [a.yaml]\n", "a.yaml": "parts: [exp.yaml]\n"}, ("cycle", "exp.yaml -> ", "a.yaml")),
        (
            {"exp.yaml": "parts: ../parts/a.yaml\n"},
            (
                "exp.yaml",
                "must be a list of file paths",
            ),
        ),
        ({"exp.yaml": "parts: [a.yaml]\n", "a.yaml": "trainer: [unclosed\n"}, ("a.yaml is not valid YAML", "line")),
    ],
    ids=["missing-part", "cycle", "not-a-list", "bad-yaml"],
)
def test_bad_includes_are_one_line_naming_the_file_and_the_fix(tmp_path, capsys, files, fragments):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(ConfigError):
        config_chain(tmp_path / "exp.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(tmp_path / "exp.yaml"), "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mcrobust: error: config ")
    assert all(fragment in err[0] for fragment in fragments), err[0]


def test_a_config_given_as_yaml_text_is_not_expanded():
    assert expand_config_args(["--config", "trainer: {max_epochs: 2}"]) == ["--config", "trainer: {max_epochs: 2}"]
