"""Bad inputs through the real CLI: one line `mcrobust: error: ...`, exit status 2, no traceback, no partial output.

Every case runs `run_cli(args=[...])` in-process on the repair (or endpoint) digits config with tiny settings. A
run that fails before its first batch must leave its log folder as it found it (here: empty); any failure must
leave no checkpoint, path table or exported model. Crafted pickles must be refused before any of their code runs.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mcrobust.cli import run_cli
from mcrobust.commands.messages import user_error_message
from mcrobust.errors import ConfigError
from mcrobust.nets import TinyNet
from mcrobust.testing import fails_in_one_line

ROOT = Path(__file__).resolve().parents[1]
REPAIR = str(ROOT / "configs/experiments/repair_digits_tiny.yaml")
ENDPOINT = str(ROOT / "configs/experiments/endpoint_digits_tiny.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
MARKER = "PWNED"


# --------------------------------------------------------------------------------------------- crafted files
class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenForWriting(_System):
    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class _Exec(_System):
    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _Eval(_System):
    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _net_state(num_classes: int = 10) -> dict[str, torch.Tensor]:
    return TinyNet(num_classes=num_classes, width=16).state_dict()


def _nonfinite(value: float) -> dict[str, torch.Tensor]:
    state = _net_state()
    state["features.1.weight"] = state["features.1.weight"].clone()
    state["features.1.weight"].view(-1)[0] = value
    return state


def _evil_lightning_ckpt(path: Path, good: Path, marker: Path) -> None:
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"] = {**checkpoint.get("hyper_parameters", {}), "callback": _System(marker)}
    torch.save(checkpoint, path)


def _truncated(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


WRITERS: dict[str, tuple[str, Callable[[Path, Path, Path], None]]] = {
    "reduce-os-system": ("evil.ckpt", lambda p, g, m: torch.save(_System(m), p)),
    "reduce-open-write": ("evil.pt", lambda p, g, m: torch.save(_OpenForWriting(m), p)),
    "reduce-exec": ("evil.pth", lambda p, g, m: torch.save(_Exec(m), p)),
    "reduce-eval": ("evil.pt", lambda p, g, m: torch.save(_Eval(m), p)),
    "nested-in-state-dict": (
        "evil.pt",
        lambda p, g, m: torch.save({"state_dict": {"w": torch.zeros(1), "x": _System(m)}}, p),
    ),
    "evil-hyper-parameters": ("evil.ckpt", _evil_lightning_ckpt),
    "truncated": ("cut.ckpt", lambda p, g, m: _truncated(p, g)),
    "garbage": ("garbage.pt", lambda p, g, m: p.write_bytes(b"not a checkpoint at all")),
    "empty": ("empty.pt", lambda p, g, m: p.write_bytes(b"")),
    "nan-weights": ("nan.pt", lambda p, g, m: torch.save(_nonfinite(float("nan")), p)),
    "inf-weights": ("inf.pt", lambda p, g, m: torch.save(_nonfinite(float("inf")), p)),
    "other-num-classes": ("five.pt", lambda p, g, m: torch.save(_net_state(num_classes=5), p)),
    "other-architecture": ("mlp.pt", lambda p, g, m: torch.save(nn.Sequential(nn.Linear(4, 2)).state_dict(), p)),
}


# ------------------------------------------------------------------------------------------------- helpers
def log_to(path: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(path), "--trainer.logger.init_args.save_dir", str(path)]


def repair_args(logs: Path, endpoints: dict[str, Path], start: Path | None = None) -> list[str]:
    return [
        "fit",
        "--config",
        REPAIR,
        "--model.init_args.start",
        str(start or endpoints["a"]),
        "--model.init_args.end",
        str(endpoints["b"]),
        "--trainer.max_epochs",
        "1",
        "--data.bonafide.size",
        "60",
        "--data.bonafide.holdout_size",
        "20",
        *QUIET,
        *log_to(logs),
    ]


def endpoint_args(logs: Path, *extra: str) -> list[str]:
    return ["fit", "--config", ENDPOINT, "--trainer.max_epochs", "1", *QUIET, *log_to(logs), *extra]


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def assert_one_line_error(capsys, args: list[str], fragment: str) -> str:
    """Run the CLI and check exit status 2, a last line `mcrobust: error: ...` holding `fragment`, no traceback."""
    return fails_in_one_line(capsys, args, fragment)


def assert_no_partial_output(logs: Path, nothing_at_all: bool = True) -> None:
    files = files_under(logs)
    forbidden = [
        f for f in files if f.suffix == ".ckpt" or f.name.startswith(("path_", "repaired_")) or ".tmp" in f.name
    ]
    assert not forbidden, forbidden
    if nothing_at_all:
        assert not files and not (logs.exists() and any(logs.iterdir())), files


# -------------------------------------------------------------------------------------- untrusted checkpoints
CHECKPOINT_CASES = [
    ("reduce-os-system", "refusing to unpickle"),
    ("reduce-open-write", "refusing to unpickle"),
    ("reduce-exec", "it needs exec, which could run code"),
    ("reduce-eval", "it needs eval, which could run code"),
    ("nested-in-state-dict", "refusing to unpickle"),
    ("evil-hyper-parameters", "keep callables out of save_hyperparameters"),
    ("truncated", "truncated or corrupt"),
    ("garbage", "truncated or corrupt"),
    ("empty", "truncated or corrupt"),
    ("nan-weights", "NaN or infinite values in 'features.1.weight'"),
    ("inf-weights", "NaN or infinite values in 'features.1.weight'"),
    ("other-num-classes", "'classifier.weight' of shape [5, 64], the network expects [10, 64]"),
    ("other-architecture", "is it a checkpoint of this architecture?"),
]


@pytest.mark.parametrize(("kind", "fragment"), CHECKPOINT_CASES, ids=[case[0] for case in CHECKPOINT_CASES])
def test_a_bad_endpoint_is_refused_in_one_line(tmp_path, capsys, tiny_endpoints, kind, fragment):
    name, write = WRITERS[kind]
    bad, marker, logs = tmp_path / name, tmp_path / MARKER, tmp_path / "logs"
    write(bad, tiny_endpoints["a"], marker)
    line = assert_one_line_error(capsys, repair_args(logs, tiny_endpoints, start=bad), fragment)
    assert str(bad) in line
    assert not marker.exists(), "unpickling ran the file's code"
    assert_no_partial_output(logs)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("reduce-os-system", "refusing to unpickle"), ("other-num-classes", "set the net's arguments (num_classes")],
    ids=["unsafe", "num-classes"],
)
def test_bad_init_weights_of_an_endpoint_run_are_refused(tmp_path, capsys, tiny_endpoints, kind, fragment):
    name, write = WRITERS[kind]
    bad, marker, logs = tmp_path / name, tmp_path / MARKER, tmp_path / "logs"
    write(bad, tiny_endpoints["a"], marker)
    assert_one_line_error(capsys, endpoint_args(logs, "--model.init_args.init_weights", str(bad)), fragment)
    assert not marker.exists()
    assert_no_partial_output(logs)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("evil-hyper-parameters", "refusing to unpickle ckpt_path"),
        ("truncated", "cannot read ckpt_path"),
        ("other-num-classes", "is not a Lightning checkpoint"),
    ],
    ids=["unsafe", "truncated", "plain-state-dict"],
)
def test_a_bad_ckpt_path_is_refused_before_anything_runs(tmp_path, capsys, tiny_endpoints, kind, fragment):
    name, write = WRITERS[kind]
    bad, marker, logs = tmp_path / name, tmp_path / MARKER, tmp_path / "logs"
    write(bad, tiny_endpoints["a"], marker)
    assert_one_line_error(capsys, repair_args(logs, tiny_endpoints) + ["--ckpt_path", str(bad)], fragment)
    assert not marker.exists()
    assert_no_partial_output(logs)


# ------------------------------------------------------------------------------------------ bad configuration
def _yaml(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CONFIG_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "unknown-key": (lambda t: ["--data.batch_sise", "3"], "unknown key 'data.batch_sise'"),
    "unknown-key-in-yaml": (lambda t: ["--config", _yaml(t, "k.yaml", "data:\n  batch_sise: 3\n")], "batch_sise"),
    "unknown-model-key": (lambda t: ["--model.init_args.num_bend", "3"], "num_bend"),
    "wrong-type": (lambda t: ["--data.batch_size", "abc"], "data.batch_size"),
    "wrong-literal": (lambda t: ["--model.init_args.kind", "spline"], "spline"),
    "bonafide-larger-than-pool": (lambda t: ["--data.bonafide.size", "100000"], "exceeds the 1437 images in the pool"),
    "batch-size-0": (lambda t: ["--data.batch_size", "0"], "data.batch_size must be >= 1"),
    "eval-batch-size-0": (lambda t: ["--data.eval_batch_size", "0"], "data.eval_batch_size must be >= 1"),
    "bonafide-fraction-2": (
        lambda t: ["--data.bonafide.size", "null", "--data.bonafide.fraction", "2"],
        "data.bonafide.fraction must be in (0, 1]",
    ),
    "holdout-eats-bonafide": (lambda t: ["--data.bonafide.holdout_size", "60"], "data.bonafide.holdout_size 60 leaves"),
    "val-t-above-1": (lambda t: ["--model.init_args.val_t", "1.5"], "val_t must be in [0, 1], got 1.5"),
    "val-t-below-0": (lambda t: ["--model.init_args.val_t", "-0.1"], "val_t must be in [0, 1], got -0.1"),
    "path-t-values": (
        lambda t: [
            "--config",
            _yaml(
                t,
                "t.yaml",
                "trainer:\n  callbacks:\n    - class_path: mcrobust.callbacks.PathEvaluation\n"
                "      init_args:\n        t_values: [0.0, 1.5]\n",
            ),
        ],
        "t values must lie in [0, 1], got 1.5",
    ),
    "num-bends-1": (lambda t: ["--model.init_args.num_bends", "1"], "num_bends must be at least 2"),
    "pgd-negative-eps": (
        lambda t: [
            "--model.init_args.eval_attack",
            "mcrobust.threats.evasion.PGD",
            "--model.init_args.eval_attack.eps",
            "-0.1",
        ],
        "PGD eps must be >= 0",
    ),
    "cifar10-missing": (
        lambda t: ["--data.dataset", "cifar10", "--data.root", str(t / "no_data")],
        "CIFAR-10 not found",
    ),
    "poison-target-not-a-class": (lambda t: ["--data.poison.target", "12"], "data.poison.target 12 is not a class"),
    "negative-max-epochs": (lambda t: ["--trainer.max_epochs", "-5"], "max_epochs"),
    "missing-config": (lambda t: ["--config", str(t / "nope.yaml")], "does not exist"),
    "malformed-yaml": (lambda t: ["--config", _yaml(t, "m.yaml", "data:\n  batch_size: [1,\n")], "parsing config"),
    "missing-endpoint": (lambda t: ["--model.init_args.start", str(t / "nope.ckpt")], "does not exist; check the path"),
    "missing-ckpt-path": (lambda t: ["--ckpt_path", str(t / "nope.ckpt")], "ckpt_path"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_configuration_is_one_line(tmp_path, capsys, tiny_endpoints, case):
    extra, fragment = CONFIG_CASES[case]
    logs = tmp_path / "logs"
    assert_one_line_error(capsys, repair_args(logs, tiny_endpoints) + extra(tmp_path), fragment)
    assert_no_partial_output(logs)


def test_a_log_folder_under_a_file_is_refused_naming_it(tmp_path, capsys, tiny_endpoints):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    args = repair_args(tmp_path / "logs", tiny_endpoints) + [
        "--trainer.logger.init_args.save_dir",
        str(blocker / "logs"),
    ]
    line = assert_one_line_error(capsys, args, f"{blocker} is a file, not a folder")
    assert "trainer.logger.init_args.save_dir" in line
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_log_folder_is_refused_naming_it(tmp_path, capsys, tiny_endpoints):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        args = repair_args(tmp_path / "logs", tiny_endpoints) + [
            "--trainer.logger.init_args.save_dir",
            str(locked / "x"),
        ]
        assert_one_line_error(capsys, args, f"the folder {locked} is not writable")
    finally:
        locked.chmod(0o755)
    assert not any(locked.iterdir())


def test_an_absurd_learning_rate_stops_at_the_step_that_diverged(tmp_path, capsys):
    logs = tmp_path / "logs"
    args = endpoint_args(logs, "--model.init_args.optimizer.init_args.lr", "1e6", "--trainer.limit_train_batches", "8")
    line = assert_one_line_error(capsys, args, "diverged at step")
    assert "the loss is nan" in line or "the loss is inf" in line
    # the run had started (its logs remain, as a record of the divergence), but it wrote no checkpoint
    assert_no_partial_output(logs, nothing_at_all=False)


def test_a_failed_start_in_a_reused_version_folder_keeps_what_was_there(tmp_path, capsys, tiny_endpoints):
    logs = tmp_path / "logs"
    version = logs / "repair_digits_tiny" / "kept"
    (version / "checkpoints").mkdir(parents=True)
    (version / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (version / "notes.txt").write_text("mine")
    args = repair_args(logs, tiny_endpoints) + [
        "--trainer.logger.init_args.version",
        "kept",
        "--data.bonafide.holdout_size",
        "60",
    ]
    assert_one_line_error(capsys, args, "data.bonafide.holdout_size 60 leaves")
    kept = sorted(p.relative_to(version).as_posix() for p in files_under(version))
    assert kept == ["checkpoints/last.ckpt", "notes.txt"]  # the failed start's config.yaml, events, ... are gone
    assert (version / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run's checkpoint"


def test_debug_mode_shows_the_traceback(tmp_path, monkeypatch, tiny_endpoints):
    monkeypatch.setenv("MCROBUST_DEBUG", "1")
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        run_cli(repair_args(tmp_path / "logs", tiny_endpoints) + ["--data.batch_size", "0"])


def test_an_error_from_a_spawned_worker_is_unwrapped_to_its_message():
    text = (
        "\n\n-- Process 0 terminated with the following error:\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nmcrobust.errors.CheckpointError: refusing to unpickle a.ckpt: it needs eval\n'
    )
    assert user_error_message(RuntimeError(text)) == "refusing to unpickle a.ckpt: it needs eval"
    assert user_error_message(RuntimeError("a bug")) is None
    wrapped = ValueError("Does not validate against any of the Union subtypes")
    wrapped.__cause__ = ConfigError("model.val_t must be in [0, 1], got 2")
    assert user_error_message(wrapped) == "model.val_t must be in [0, 1], got 2"


def test_without_a_logger_a_failed_start_removes_only_its_own_setup_files(tmp_path, capsys, tiny_endpoints):
    root = tmp_path / "root"
    root.mkdir()
    (root / "mine.txt").write_text("mine")
    args = repair_args(root, tiny_endpoints)[:-4] + [
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(root),
    ]
    assert_one_line_error(capsys, args + ["--data.bonafide.holdout_size", "60"], "data.bonafide.holdout_size 60 leaves")
    assert sorted(p.name for p in root.iterdir()) == ["mine.txt"]


# ----------------------------------------------------------------------------------------------------- guards
def test_output_snapshot_removes_only_what_appeared(tmp_path):
    from mcrobust.io.preflight import OutputSnapshot

    shared, run = tmp_path / "shared", tmp_path / "logs" / "name" / "version_0"
    shared.mkdir()
    (shared / "old.txt").write_text("old")
    snapshot = OutputSnapshot([run], shared_folders=[shared])
    run.mkdir(parents=True)
    (run / "anything.bin").write_bytes(b"x")
    for name in ("config.yaml", "bonafide_indices.json", "events.out.tfevents.1.host", "someone_elses.txt"):
        (shared / name).write_text("new")
    snapshot.remove_new()
    assert sorted(p.name for p in shared.iterdir()) == ["old.txt", "someone_elses.txt"]
    assert not (tmp_path / "logs").exists()  # the folders the run created are gone too


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_check_finite_loss_names_the_step_and_the_value(value):
    from mcrobust.utils.checks import TrainingDiverged, check_finite_loss

    check_finite_loss(torch.tensor(2.5), step=3)
    with pytest.raises(TrainingDiverged, match=f"diverged at step 7: the loss is {value}"):
        check_finite_loss(torch.tensor([1.0, value]), step=7)
