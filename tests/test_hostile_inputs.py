"""Hostile or careless inputs through the real CLI (issue 16): exit status 2, one line naming the setting, no output.

Crafted `--ckpt_path` files (another system class, classes outside the trusted packages, weights only, NaN),
broken image folders, impossible optimizer and trainer settings, a full disk, a version folder that is a file;
plus byte-identical exports and a failed start whose stderr holds the error line and nothing else.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mcrobust.cli import run_cli
from mcrobust.commands.logs import HeldLogs
from mcrobust.errors import CheckpointError
from mcrobust.testing import fails_in_one_line

ROOT = Path(__file__).resolve().parents[1]
REPAIR = str(ROOT / "configs/experiments/repair_digits_tiny.yaml")
ENDPOINT = str(ROOT / "configs/experiments/endpoint_digits_tiny.yaml")
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
PROBE = "mcrobust_hostile_probe"
"""A module written by the tests whose import leaves a marker file: it must never be imported."""


def log_to(path: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(path), "--trainer.logger.init_args.save_dir", str(path)]


def endpoint(subcommand: str, logs: Path, *extra: str) -> list[str]:
    return [subcommand, "--config", ENDPOINT, *SHORT, *QUIET, *log_to(logs), *extra]


def repair(subcommand: str, logs: Path, start: Path, *extra: str) -> list[str]:
    ends = ["--model.init_args.start", str(start), "--model.init_args.end", str(start)]
    sizes = ["--data.bonafide.size", "60", "--data.bonafide.holdout_size", "20"]
    return [subcommand, "--config", REPAIR, *ends, *sizes, *SHORT, *QUIET, *log_to(logs), *extra]


def files_under(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails_leaving_nothing(capsys, tmp_path: Path, args: list[str], *fragments: str) -> str:
    """`fails_in_one_line`, and the folder the run logs to holds exactly what it held before."""
    logs = tmp_path / "logs"
    before = files_under(logs)
    line = fails_in_one_line(capsys, args, *fragments)
    assert files_under(logs) == before
    return line


# ------------------------------------------------------------------------------------ checkpoints of real runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An endpoint checkpoint and a curve checkpoint written by the CLI (their hyperparameters name the class)."""
    root = tmp_path_factory.mktemp("runs")
    run_cli(endpoint("fit", root, "--trainer.logger.init_args.version", "a"))
    ckpt = root / "endpoint_digits_tiny" / "a" / "checkpoints" / "last.ckpt"
    cli = run_cli(repair("fit", root, ckpt, "--trainer.logger.init_args.version", "path", "--trainer.callbacks", "[]"))
    cli.trainer.save_checkpoint(root / "curve.ckpt")
    return {"endpoint": ckpt, "curve": root / "curve.ckpt"}


def crafted(runs: dict[str, Path], tmp_path: Path, name: str, edit) -> Path:
    """A copy of the endpoint checkpoint changed by `edit(checkpoint)`."""
    checkpoint = torch.load(runs["endpoint"], map_location="cpu", weights_only=True)
    edit(checkpoint)
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    ("subcommand", "saved", "configured"),
    [
        pytest.param("fit", "curve", "endpoint", id="fit-endpoint-config-curve-ckpt"),
        pytest.param("fit", "endpoint", "curve", id="fit-repair-config-endpoint-ckpt"),
        pytest.param("test", "endpoint", "curve", id="test-repair-config-endpoint-ckpt"),
    ],
)
def test_a_checkpoint_of_another_system_class_names_both(capsys, tmp_path, runs, subcommand, saved, configured):
    classes = {"endpoint": "mcrobust.systems.EndpointSystem", "curve": "mcrobust.systems.CurveSystem"}
    ckpt = ["--ckpt_path", str(runs[saved])]
    args = endpoint(subcommand, tmp_path / "logs", *ckpt)
    if configured == "curve":
        args = repair(subcommand, tmp_path / "logs", runs["endpoint"], *ckpt)
    fails_leaving_nothing(
        capsys, tmp_path, args, f"is a checkpoint of {classes[saved]}", f"the config's model is {classes[configured]}"
    )


# ------------------------------------------------------------------------------- hyperparameters stay data
def write_probe(folder: Path) -> Path:
    """A module that, when imported, writes a marker file and sets an environment variable."""
    marker = folder / "imported.marker"
    (folder / f"{PROBE}.py").write_text(
        "import os, pathlib, torch\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "os.environ['MCROBUST_PROBE_IMPORTED'] = '1'\n"
        "class Net(torch.nn.Module):\n    pass\n"
        "def optimizer(params):\n    return torch.optim.SGD(params, lr=0.1)\n"
    )
    return marker


HOSTILE_HPARAMS = {
    "net-class-path": (lambda h: h.update(net={"class_path": f"{PROBE}.Net", "init_args": {}}), f"{PROBE}.Net"),
    "system-class-path": (lambda h: h.update(_class_path=f"{PROBE}.System"), f"{PROBE}.System"),
    "callable-string": (lambda h: h.update(optimizer=f"{PROBE}.optimizer"), f"{PROBE}.optimizer"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HPARAMS))
def test_hyperparameters_naming_foreign_code_are_refused_before_any_import(capsys, tmp_path, monkeypatch, runs, case):
    edit, named = HOSTILE_HPARAMS[case]
    marker = write_probe(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = crafted(runs, tmp_path, "hostile.ckpt", lambda c: edit(c["hyper_parameters"]))
    line = fails_leaving_nothing(capsys, tmp_path, endpoint("fit", tmp_path / "logs", "--ckpt_path", str(bad)), named)
    assert f"refusing ckpt_path {bad}" in line
    assert PROBE not in sys.modules and not marker.exists()
    assert "MCROBUST_PROBE_IMPORTED" not in os.environ


def test_the_command_refuses_a_foreign_class_in_one_line_and_never_imports_it(tmp_path, runs):
    """Through `python -m mcrobust`: the only stderr line is the error (no Lightning start-up lines either)."""
    marker = write_probe(tmp_path)
    bad = crafted(runs, tmp_path, "hostile.ckpt", lambda c: HOSTILE_HPARAMS["net-class-path"][0](c["hyper_parameters"]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("MCROBUST_DEBUG", None)
    command = [sys.executable, "-m", "mcrobust", *endpoint("fit", tmp_path / "logs", "--ckpt_path", str(bad))]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"mcrobust: error: refusing ckpt_path {bad}: its hyperparameters name {PROBE}.Net (model.net.class_path), "
        "which would be imported; only classes of mcrobust, torch, torchvision, pytorch_lightning, torchmetrics "
        "or of your config are built from a checkpoint"
    ]
    assert not marker.exists()
    assert not (tmp_path / "logs").exists()


def test_class_paths_the_config_names_are_allowed_and_file_names_are_data():
    from mcrobust.io.trust import check_checkpoint_classes

    hparams = {"net": {"class_path": "my_lab.nets.Net"}, "start": "a.ckpt", "optimizer": "torch.optim.SGD"}
    check_checkpoint_classes(hparams, "x.ckpt", named=["my_lab.nets.Net"])
    with pytest.raises(CheckpointError, match=r"name my_lab\.nets\.Net \(model\.net\.class_path\)"):
        check_checkpoint_classes(hparams, "x.ckpt")
    with pytest.raises(CheckpointError, match=r"name os\.system \(model\.optimizer\)"):
        check_checkpoint_classes({"optimizer": "os.system"}, "x.ckpt")  # os is installed: jsonargparse would import


# --------------------------------------------------------------------------------- not a resumable checkpoint
@pytest.mark.parametrize("wrapped", [True, False], ids=["state-dict-wrapper", "plain-state-dict"])
def test_weights_only_as_ckpt_path_point_to_init_weights(capsys, tmp_path, runs, wrapped):
    state = torch.load(runs["endpoint"], map_location="cpu", weights_only=True)["state_dict"]
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": state} if wrapped else state, bad)
    args = endpoint("fit", tmp_path / "logs", "--ckpt_path", str(bad))
    fails_leaving_nothing(capsys, tmp_path, args, f"ckpt_path {bad} is not a Lightning checkpoint", "init_weights")


@pytest.mark.parametrize(
    ("subcommand", "value"), [("validate", float("nan")), ("test", float("inf"))], ids=["validate-nan", "test-inf"]
)
def test_evaluating_a_checkpoint_with_nonfinite_weights_is_refused(capsys, tmp_path, runs, subcommand, value):
    def poison(checkpoint):
        checkpoint["state_dict"]["net.classifier.weight"].view(-1)[3] = value

    bad = crafted(runs, tmp_path, "diverged.ckpt", poison)
    args = endpoint(subcommand, tmp_path / "logs", "--ckpt_path", str(bad))
    fails_leaving_nothing(
        capsys, tmp_path, args, f"ckpt_path {bad}", "NaN or infinite values in 'net.classifier.weight'"
    )


# ------------------------------------------------------------------------------------------- image folders
def image_folder(root: Path, train: tuple[str, ...], test: tuple[str, ...]) -> Path:
    from PIL import Image

    for split, classes in (("train", train), ("test", test)):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = np.full((8, 8, 3), 30 * label + i, np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def image_args(tmp_path: Path, root: Path) -> list[str]:
    return endpoint("fit", tmp_path / "logs", "--data.dataset", "image_folder", "--data.root", str(root))


@pytest.mark.parametrize(
    ("test_classes", "fragment"),
    [(("1", "2", "3"), "only in train/: three; only in test/: 3"), (("1", "2"), "only in train/: three")],
    ids=["typo", "missing-in-test"],
)
def test_image_folder_splits_with_other_classes_name_them(capsys, tmp_path, test_classes, fragment):
    root = image_folder(tmp_path / "images", ("1", "2", "three"), test_classes)
    fails_leaving_nothing(capsys, tmp_path, image_args(tmp_path, root), fragment, "data.root")


@pytest.mark.parametrize("kind", ["empty", "not-an-image", "truncated"])
def test_an_unreadable_image_is_named_with_the_setting_that_skips_it(capsys, tmp_path, kind):
    root = image_folder(tmp_path / "images", ("a", "b"), ("a", "b"))
    bad = root / "train" / "b" / "1.png"
    content = {"empty": b"", "not-an-image": b"hello, not a png", "truncated": bad.read_bytes()[:40]}[kind]
    bad.write_bytes(content)
    fails_leaving_nothing(capsys, tmp_path, image_args(tmp_path, root), f"cannot read {bad}", "data.skip_unreadable")


# ----------------------------------------------------------------------------------------- impossible settings
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--model.init_args.optimizer.init_args.lr", "-0.1"], "model.init_args.optimizer.init_args.lr must be >= 0"),
        (["--model.init_args.optimizer.init_args.momentum", "-1"], "optimizer.init_args.momentum must be >= 0, got -1"),
        (["--trainer.check_val_every_n_epoch", "0"], "trainer.check_val_every_n_epoch must be >= 1, got 0"),
    ],
    ids=["negative-lr", "negative-momentum", "check-val-every-0-epochs"],
)
def test_settings_torch_refuses_late_are_refused_first(capsys, tmp_path, extra, fragment):
    fails_leaving_nothing(capsys, tmp_path, endpoint("fit", tmp_path / "logs", *extra), fragment)


def test_a_blend_pattern_file_error_is_the_projects_line_not_the_union_text(capsys, tmp_path, runs):
    missing = tmp_path / "pattern.png"
    trigger = ["--data.poison.trigger", "mcrobust.threats.triggers.BlendTrigger"]
    args = repair(
        "fit", tmp_path / "logs", runs["endpoint"], *trigger, "--data.poison.trigger.pattern_path", str(missing)
    )
    line = fails_leaving_nothing(capsys, tmp_path, args, str(missing))
    assert "Union" not in line and "Subtypes" not in line


# --------------------------------------------------------------------------------------------- output folders
def test_a_full_disk_while_writing_a_checkpoint_is_one_line(capsys, tmp_path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    folder = tmp_path / "logs" / "endpoint_digits_tiny" / "version_0" / "checkpoints"
    fails_in_one_line(capsys, endpoint("fit", tmp_path / "logs"), f"no space left on {folder} while writing")
    leftovers = [name for name in files_under(tmp_path / "logs") if name.endswith((".ckpt", ".tmp"))]
    assert leftovers == []


def test_a_full_disk_while_writing_a_table_names_the_folder(tmp_path, monkeypatch):
    from mcrobust.io.files import NoSpaceLeft
    from mcrobust.io.tables import write_csv

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(NoSpaceLeft, match=f"no space left on {tmp_path} while writing path.csv"):
        write_csv(tmp_path / "path.csv", [{"t": 0.5}], ["t"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocked", ["kept", "kept/checkpoints"], ids=["version", "checkpoints"])
def test_a_version_folder_or_one_inside_it_that_is_a_file(capsys, tmp_path, blocked):
    logs = tmp_path / "logs"
    path = logs / "endpoint_digits_tiny" / blocked
    path.parent.mkdir(parents=True)
    path.write_text("a file, not a folder")
    args = endpoint("fit", logs, "--trainer.logger.init_args.version", "kept")
    setting = "ModelCheckpoint dirpath" if "/" in blocked else "trainer.logger.init_args.name / version"
    fails_leaving_nothing(capsys, tmp_path, args, f"{path} is a file, not a folder", setting)


# -------------------------------------------------------------------------------------------------- exports
def test_a_same_seed_export_writes_the_same_bytes(tmp_path):
    from mcrobust.nets import TinyNet
    from mcrobust.paths.curves import CurveModel
    from mcrobust.paths.export import export_point

    def export(folder: Path) -> dict[str, Path]:
        torch.manual_seed(0)
        curve = CurveModel(TinyNet(width=8))
        curve.set_endpoints(TinyNet(width=8).state_dict(), TinyNet(width=8).state_dict())
        batches = [(torch.rand(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))]
        return export_point(curve, 0.25, batches, folder)

    first, second = export(tmp_path / "one"), export(tmp_path / "two")
    for kind in ("pt", "safetensors", "config"):
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind
    assert {name.split("/")[0] for name in zipfile.ZipFile(first["pt"]).namelist()} == {"archive"}
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "repaired_t0.250.json",
        "repaired_t0.250.pt",
        "repaired_t0.250.safetensors",
    ]


def test_checkpoint_bytes_do_not_depend_on_the_temporary_name(tmp_path):
    from mcrobust.cli import AtomicCheckpointIO

    checkpoint = {"state_dict": {"w": torch.arange(4.0)}, "epoch": 1}
    AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "a" / "last.ckpt")
    AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "b" / "last.ckpt")
    assert (tmp_path / "a" / "last.ckpt").read_bytes() == (tmp_path / "b" / "last.ckpt").read_bytes()


# ------------------------------------------------------------------------------------------ start-up lines
def test_a_failed_start_drops_lightnings_start_up_lines_and_a_run_keeps_them(capsys, tmp_path):
    import logging

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    loggers, collect = [logging.getLogger(name) for name in HeldLogs.LOGGERS], Collect()
    for logger in loggers:
        logger.addHandler(collect)
    try:
        root = image_folder(tmp_path / "images", ("a", "b"), ("a", "b"))
        (root / "test" / "a" / "0.png").write_bytes(b"")  # found in set-up, after the Trainer has logged its lines
        fails_in_one_line(capsys, image_args(tmp_path, root), "data.skip_unreadable")
        assert seen == []
        run_cli(endpoint("fit", tmp_path / "ok"))
        assert "Seed set to 0" in seen and any(line.startswith("GPU available") for line in seen)
    finally:
        for logger in loggers:
            logger.removeHandler(collect)


def test_held_logs_drop_lightning_lines_of_a_failed_start_and_replay_those_of_a_run():
    import logging

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    lightning, collect = logging.getLogger("pytorch_lightning"), Collect()
    lightning.addHandler(collect)
    try:
        for replay in (False, True):
            held = HeldLogs()
            held.hold()
            logging.getLogger("pytorch_lightning.utilities.rank_zero").info(f"GPU available, replay={replay}")
            assert seen == []
            held.restore(replay=replay)
        assert seen == ["GPU available, replay=True"]
        logging.getLogger("pytorch_lightning.trainer").info("after")
        assert seen[-1] == "after"
    finally:
        lightning.removeHandler(collect)
