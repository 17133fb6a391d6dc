"""Files from elsewhere are data until proven otherwise: the one place that decides what may be unpickled.

`check_resume_checkpoint` refuses a `--ckpt_path` that is missing, damaged, diverged, not a Lightning checkpoint or
would run code when unpickled; `check_checkpoint_classes` refuses one whose hyperparameters name code outside the
trusted packages, checked before anything is imported. Pickles that are not torch files (CIFAR-10's batches) are
read by `RestrictedUnpickler`, which imports only an allow-list (`NUMPY_ARRAYS`); `refused_global` names the
global that either unpickler refused, for the one-line error.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import sys
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from mcrobust.errors import CheckpointError
from mcrobust.utils.checks import check_finite

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
"""How torch's `weights_only` unpickler and `RestrictedUnpickler` name a global they refuse."""

NUMPY_ARRAYS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x and 2.x pickles
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype")}
"""The globals a pickle of plain containers and numpy arrays needs: nothing that can run code."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that imports only allowed globals: a data file from elsewhere can never run code.

    Containers, numbers and strings need no global; any other class or function a pickle names is refused before it
    is imported, with the words torch's `weights_only` unpickler uses, so `refused_global` reads both.

    Args:
        file: the pickle, open in binary mode.
        allowed: the (module, name) pairs that may be imported, e.g. `NUMPY_ARRAYS`.
        encoding: how Python 2 byte strings are decoded ("latin1" for CIFAR-10's batches).
    """

    def __init__(self, file: IO[bytes], allowed: Collection[tuple[str, str]], encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = frozenset(allowed)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} was not an allowed global")
        return super().find_class(module, name)


def refused_global(error: BaseException) -> str | None:
    """The global (`os.system`) an unpickler refused to import, from its error; None for any other failure."""
    found = _UNSAFE_GLOBAL.search(str(error)) if isinstance(error, pickle.UnpicklingError) else None
    return found.group(1) if found else None


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
            # weights_only unless the user passed `--weights_only false` for a file they trust (docs/threat_model.md)
            return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=True)
    except pickle.UnpicklingError as error:
        found = refused_global(error)
        needs = f"it needs {found}, which could run code" if found else "it holds more than tensors"
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
