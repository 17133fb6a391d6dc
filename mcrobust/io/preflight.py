"""Output-folder checks before a run writes anything, and the undo of what a failed start left behind.

`check_writable_folder` refuses an output folder that cannot be created; `OutputSnapshot` removes the files and
folders a run that failed before its first batch created, so the next attempt gets the same version folder and
nothing half-done is left to mistake for a result (docs/threat_model.md states the guarantee).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from mcrobust.errors import ConfigError


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
