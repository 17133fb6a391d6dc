"""Guards that stop a run early and say why, and undo what a run that failed before its first batch left behind.

Four guards, all plain torch or plain filesystem code (the CLI and the systems wire them into Lightning):
`check_finite_loss` stops training at the first NaN or infinite loss, `check_writable_folder` refuses an output
folder that cannot be created before anything runs, `check_resume_checkpoint` refuses a `--ckpt_path` that is
missing, damaged or would run code when unpickled, and `OutputSnapshot` removes the files and folders a failed
start created, so the next attempt gets the same version folder and nothing half-done is left to mistake for a
result (docs/threat_model.md states the guarantee).
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

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


def check_resume_checkpoint(path: str | os.PathLike[str], trusted: bool = False) -> None:
    """Raise CheckpointError when the Lightning checkpoint to resume from is missing, damaged or unsafe.

    The file is opened the way Lightning will open it, `torch.load(weights_only=True)`, but memory-mapped, so the
    tensors are not read: the check costs the unpickling of the metadata only.

    Args:
        path: the `ckpt_path` given to fit / validate / test / predict.
        trusted: the user passed `--weights_only false`; only the file's existence is checked.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointError(f"ckpt_path {path} {problem}; give the .ckpt file of an earlier run")
    if trusted:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path {path} is not a Lightning checkpoint (no 'state_dict'); plain weights go to "
            "model.init_args.start / end / init_weights"
        )


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
