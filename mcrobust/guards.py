"""Guards that stop a run early and say why, and undo what a run that failed before its first batch left behind.

Guards in plain torch or plain filesystem code (the CLI and the systems wire them into Lightning):
`check_finite_loss` stops training at the first NaN or infinite loss, `check_writable_folder` refuses an output
folder that cannot be created before anything runs, `check_resume_checkpoint` refuses a `--ckpt_path` that is
missing, damaged, diverged, not a Lightning checkpoint or would run code when unpickled,
`check_checkpoint_classes` refuses one whose hyperparameters name code outside the trusted packages (checked
before anything is imported), and `OutputSnapshot` removes the files and folders a failed
start created, so the next attempt gets the same version folder and nothing half-done is left to mistake for a
result (docs/threat_model.md states the guarantee).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import pickle
import re
import shutil
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcrobust.checkpoints import check_finite
from mcrobust.errors import CheckpointError, ConfigError, MCRobustError

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class TrainingDiverged(MCRobustError):
    """The training loss became NaN or infinite: the run cannot recover, so it stops with one line."""


def check_finite_loss(loss: Tensor, step: int) -> None:
    """Raise TrainingDiverged when `loss` holds a NaN or an infinity.

    One `torch.isfinite` reduction; on an accelerator reading the result waits for the step, which the per-step
    metric update (torchmetrics' NaN check) already does, so the guard adds no new synchronisation point.

    Args:
        loss: the training loss of one step (any shape).
        step: the global step, named in the message.

    Raises:
        TrainingDiverged: `training diverged at step N: the loss is nan; ...`.
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    values = loss.detach().flatten()
    value = float(values[~torch.isfinite(values)][0])
    raise TrainingDiverged(
        f"training diverged at step {step}: the loss is {value}; lower the learning rate "
        "(model.init_args.optimizer.init_args.lr) or check the data and the endpoints"
    )


def nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_writable_folder(folder: str | os.PathLike[str], setting: str) -> None:
    """Raise ConfigError, naming the folder and the setting, when `folder` cannot be created or written.

    Nothing is created: the closest existing ancestor must be a folder the process may write into.

    Args:
        folder: an output folder that may not exist yet.
        setting: the configuration key that chose it, e.g. 'trainer.logger.init_args.save_dir'.
    """
    path = Path(folder).absolute()
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise ConfigError(f"cannot write to {path} ({setting}): {existing} is a file, not a folder; choose another")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write to {path} ({setting}): the folder {existing} is not writable; choose another or fix its "
            "permissions"
        )


def check_resume_checkpoint(path: str | os.PathLike[str], trusted: bool = False) -> dict[str, Any]:
    """Raise CheckpointError when the Lightning checkpoint to resume from is missing, damaged, unsafe or diverged.

    The file is opened the way Lightning will open it, `torch.load(weights_only=True)`, but memory-mapped, so only
    the metadata is read up front; the finiteness check then reads the weights once.

    Args:
        path: the `ckpt_path` given to fit / validate / test / predict.
        trusted: the user passed `--weights_only false`: the file is unpickled without restrictions.

    Returns:
        The checkpoint (tensors memory-mapped).
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointError(f"ckpt_path {path} {problem}; give the .ckpt file of an earlier run")
    checkpoint = _load_checkpoint(path, trusted)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or LIGHTNING_VERSION not in checkpoint:
        held = "weights only" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise CheckpointError(
            f"ckpt_path {path} is not a Lightning checkpoint (it holds {held}, no trainer state); to start from plain "
            "weights set model.init_args.init_weights (an endpoint) or model.init_args.start / end (a curve)"
        )
    if isinstance(checkpoint["state_dict"], Mapping):
        tensors = {key: value for key, value in checkpoint["state_dict"].items() if isinstance(value, Tensor)}
        check_finite(tensors, f"ckpt_path {path}")
    return checkpoint


def _load_checkpoint(path: Path, trusted: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=True)
    except pickle.UnpicklingError as error:
        found = _UNSAFE_GLOBAL.search(str(error))
        needs = f"it needs {found.group(1)}, which could run code" if found else "it holds more than tensors"
        raise CheckpointError(
            f"refusing to unpickle ckpt_path {path}: {needs}; resume only from checkpoints mcrobust wrote "
            "(or pass --weights_only false for a file you trust)"
        ) from None
    except Exception as error:  # zip and storage errors: a damaged file, or not a torch.save zip archive
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise CheckpointError(
            f"cannot read ckpt_path {path} ({detail}); the file is truncated or corrupt, or not a Lightning checkpoint"
        ) from None


TRUSTED_PACKAGES = ("mcrobust", "torch", "torchvision", "pytorch_lightning", "torchmetrics")
"""Packages whose classes a checkpoint's hyperparameters may name; anything else only when the config names it."""

LIGHTNING_VERSION = "pytorch-lightning_version"
"""The key every checkpoint Lightning writes has (a plain state_dict or `{'state_dict': ...}` does not)."""

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_CLASS_PATH_KEYS = ("class_path", "_class_path", "_instantiator")


def check_checkpoint_classes(hyperparameters: Any, path: str | os.PathLike[str], named: Iterable[str] = ()) -> None:
    """Raise CheckpointError when a checkpoint's hyperparameters name code outside the trusted packages.

    LightningCLI merges a `ckpt_path`'s hyperparameters into the config and then imports and builds every
    `class_path` in them, and jsonargparse imports any dotted string given to a callable or type argument: a
    crafted checkpoint could thereby import a module of its choice. Nothing is imported here: a `class_path`
    (and any other dotted string whose first part is an installed module) must lie in `TRUSTED_PACKAGES` or be
    named by the user's own config.

    Args:
        hyperparameters: the checkpoint's `hyper_parameters` (nested dicts and lists).
        path: the checkpoint, named in the message.
        named: the strings of the user's config (class paths it names are allowed).
    """
    allowed = set(named)
    for key, value in nested_strings(hyperparameters, "model"):
        if value in allowed or not _IMPORT_PATH.match(value) or value.split(".")[0] in TRUSTED_PACKAGES:
            continue
        if key.rsplit(".", 1)[-1] in _CLASS_PATH_KEYS or _is_installed(value.split(".")[0]):
            raise CheckpointError(
                f"refusing ckpt_path {path}: its hyperparameters name {value} ({key}), which would be imported; "
                f"only classes of {', '.join(TRUSTED_PACKAGES)} or of your config are built from a checkpoint"
            )


def nested_strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, string) for every string in nested mappings and sequences, keys joined with dots."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for name, item in value.items():
            yield from nested_strings(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from nested_strings(item, f"{key}.{index}")


def _is_installed(module: str) -> bool:
    """Whether a top-level module can be imported; finding it runs none of its code."""
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


NON_NEGATIVE_OPTIMIZER_ARGUMENTS = ("lr", "momentum", "weight_decay", "eps")
"""torch.optim arguments that torch refuses below 0, only once the optimizer is built (after the run set up)."""


def check_settings(config: Mapping[str, Any]) -> None:
    """Raise ConfigError, naming the key, for settings that torch or Lightning reject only after set-up began.

    Checked on the parsed config, before anything is built or written: every `torch.optim` class's `lr`,
    `momentum`, `weight_decay`, `eps` (>= 0) and `betas` (in [0, 1)), and `trainer.check_val_every_n_epoch`.

    Args:
        config: one subcommand's parsed config as nested dicts (`class_path` / `init_args` for classes).
    """
    trainer = config.get("trainer") or {}
    every = trainer.get("check_val_every_n_epoch") if isinstance(trainer, Mapping) else None
    if isinstance(every, int) and every < 1:
        raise ConfigError(
            f"trainer.check_val_every_n_epoch must be >= 1, got {every}; or null, to validate every "
            "trainer.val_check_interval training batches"
        )
    for key, spec in class_settings(config):
        if str(spec.get("class_path", "")).startswith("torch.optim.") and isinstance(spec.get("init_args"), Mapping):
            _check_optimizer_arguments(spec["init_args"], f"{key}.init_args")


def class_settings(value: Any, key: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(key, mapping) for every `class_path` mapping in nested mappings and sequences."""
    if isinstance(value, Mapping):
        if "class_path" in value:
            yield key, value
        for name, item in value.items():
            yield from class_settings(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from class_settings(item, f"{key}.{index}")


def _check_optimizer_arguments(arguments: Mapping[str, Any], key: str) -> None:
    for name in NON_NEGATIVE_OPTIMIZER_ARGUMENTS:
        value = arguments.get(name)
        if isinstance(value, (int, float)) and not value >= 0:  # `not >=` also catches NaN
            raise ConfigError(f"{key}.{name} must be >= 0, got {value}")
    betas = arguments.get("betas")
    if isinstance(betas, (list, tuple)):
        for index, beta in enumerate(betas):
            if isinstance(beta, (int, float)) and not 0.0 <= beta < 1.0:
                raise ConfigError(f"{key}.betas[{index}] must be in [0, 1), got {beta}")


SETUP_FILES = ("config.yaml", "hparams.yaml", "bonafide_indices.json", "events.out.tfevents.*", ".*.tmp")
"""What a run writes before its first batch into a folder it shares with other things (no logger: the root dir)."""


class OutputSnapshot:
    """What a run's output folders held before it started, to remove what a start that failed added there.

    Only entries directly inside each folder are recorded: a run writes its set-up files there (logger events,
    hparams.yaml, config.yaml, bonafide_indices.json). Entries that existed before are never touched.

    Args:
        run_folders: folders that belong to this run (a logger's version folder): every new entry is removed.
        shared_folders: folders shared with other things (`default_root_dir` without a logger): only new entries
            named like `SETUP_FILES` are removed.
    """

    def __init__(
        self, run_folders: Iterable[str | os.PathLike[str]], shared_folders: Iterable[str | os.PathLike[str]] = ()
    ) -> None:
        self.before: dict[Path, tuple[set[str], Path, bool]] = {}
        for shared, folders in ((True, shared_folders), (False, run_folders)):
            for folder in folders:
                path = Path(folder).absolute()
                names = set(os.listdir(path)) if path.is_dir() else set()
                self.before[path] = (names, nearest_existing(path), shared)

    def remove_new(self) -> list[Path]:
        """Delete the entries created since the snapshot, then the folders it created if they are empty.

        Returns:
            The removed paths.
        """
        removed: list[Path] = []
        for folder, (names, existing, shared) in sorted(self.before.items(), key=lambda item: -len(item[0].parts)):
            if folder.is_dir():
                for name in sorted(set(os.listdir(folder)) - names):
                    if not shared or any(fnmatch.fnmatchcase(name, pattern) for pattern in SETUP_FILES):
                        removed.append(_remove(folder / name))
            for parent in (folder, *folder.parents):
                if parent == existing or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
                removed.append(parent)
        return removed


def _remove(path: Path) -> Path:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return path
