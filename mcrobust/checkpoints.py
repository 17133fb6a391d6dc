"""Read and write network weights safely: Lightning `.ckpt`, plain state_dicts and `.safetensors`.

A network to repair comes from an untrusted party, so pickles are only ever read with
`torch.load(weights_only=True)`: a file that needs arbitrary unpickling is refused before anything
in it runs. Every error is one line that names the file or tensor and says what to fix.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcrobust.atomic import atomic_path
from mcrobust.errors import CheckpointError

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.")
"""Prefixes that DDP (`module.`), `torch.compile` (`_orig_mod.`) and our systems (`net.`) put on keys."""

_CURVE_KEY = re.compile(r"(^|\.)bends\.\d+\.")
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module \S+ is blocked)")
_UNSAFE_OPERAND = re.compile(r"Unsupported operand \S+")


def shape_of(tensor: Tensor) -> list[int]:
    """The shape as a plain list, the way messages print it (`[64, 3, 3, 3]`)."""
    return list(tensor.shape)


def load_weights(path: str | os.PathLike[str], template: nn.Module | None = None) -> dict[str, Tensor]:
    """Load a network's weights from a `.ckpt`, `.pt`/`.pth` or `.safetensors` file.

    Wrappers (`{'state_dict': ...}`, `{'model': ...}`) and key prefixes (`module.`, `net.`, a Lightning
    system's attribute) are removed. With `template` the keys are matched to its state_dict and checked.

    Args:
        path: the checkpoint file.
        template: the network the weights are meant for; its keys decide which prefix to strip.

    Returns:
        A state_dict on the CPU whose floating tensors are all finite.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, a curve, or does not fit `template`.
    """
    path = _existing_file(path)
    lightning = False
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        obj = _read_pickle(path)
        lightning = isinstance(obj, Mapping) and "pytorch-lightning_version" in obj
        state = _unwrap(obj, path)
    if _is_curve(state):
        raise CheckpointError(
            f"{path} is a curve checkpoint (it holds bends, not one network); give an endpoint's checkpoint, "
            "or export a point of the path first"
        )
    if template is not None:
        state = match_state_dict(state, template, str(path))
    else:
        state = _strip_prefixes(state, path, lightning)
    check_finite(state, str(path))
    return state


def match_state_dict(state_dict: Mapping[str, Tensor], template: nn.Module, source: str) -> dict[str, Tensor]:
    """Rename `state_dict` to the keys of `template` and check that every key and shape fits.

    The prefix to strip is the one under which most keys of the template are found, so `net.`,
    `module.`, `net.module.` or any other wrapper attribute is handled without a list of names.

    Args:
        state_dict: weights, possibly with wrapper prefixes on the keys.
        template: the network they must fit.
        source: how messages name the weights, e.g. a path or "endpoint B".

    Returns:
        A new dict with exactly the keys of `template.state_dict()`.

    Raises:
        CheckpointError: naming the first missing, mismatched or unexpected tensor.
    """
    expected = template.state_dict()
    prefix = _best_prefix(state_dict.keys(), expected.keys())
    state = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    _fill_tied_aliases(state, template)
    for key, reference in expected.items():
        if key not in state:
            raise CheckpointError(
                f"{source} lacks {key!r} of shape {shape_of(reference)} that the network expects; "
                "is it a checkpoint of this architecture?"
            )
        if state[key].shape != reference.shape:
            raise CheckpointError(
                f"{source} has {key!r} of shape {shape_of(state[key])}, the network expects {shape_of(reference)}; "
                "set the net's arguments (num_classes, width, ...) to those the checkpoint was trained with"
            )
    for key, value in state.items():
        if key not in expected:
            raise CheckpointError(
                f"{source} has {key!r} of shape {shape_of(value)} that the network does not have; "
                "is it a checkpoint of this architecture?"
            )
    return {key: state[key] for key in expected}


def check_finite(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError naming the first floating tensor with a NaN or an infinity."""
    for key, value in state_dict.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{source} has NaN or infinite values in {key!r}; the run that wrote it diverged, "
                "use another checkpoint"
            )


def save_weights(state_dict: Mapping[str, Tensor], path: str | os.PathLike[str]) -> Path:
    """Write a state_dict atomically as `.safetensors` or, for any other suffix, with `torch.save`.

    The file is written next to `path` under a temporary name and moved into place with `os.replace`,
    so a crash never leaves a truncated checkpoint. Tied or non-contiguous tensors are copied for
    safetensors, which stores neither; every key is kept, so the file loads back with `strict=True`.

    Args:
        state_dict: name -> tensor (any device; saved on the CPU).
        path: the destination file; its folder is created if needed.

    Returns:
        The path written.
    """
    path = Path(path)
    tensors = _plain_tensors(state_dict, path)
    with atomic_path(path) as temporary:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(_unshared(tensors), str(temporary), metadata={"format": "pt"})
        else:
            torch.save(tensors, temporary)
    return path


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint file inside it")
    return path


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(
            f"cannot read {path} as safetensors ({_first_line(error)}); "
            "the file is truncated or corrupt, write it again"
        ) from None


def _read_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes; the failure itself is reported below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _UNSAFE_GLOBAL.search(str(error))
        if found:
            hint = " (Lightning: keep callables out of save_hyperparameters)" if path.suffix == ".ckpt" else ""
            raise CheckpointError(
                f"refusing to unpickle {path}: it needs {found.group(1)}, which could run code; "
                f"re-save it as a plain state_dict or .safetensors{hint}"
            ) from None
        raise CheckpointError(
            f"cannot read {path} ({_unpickling_detail(error)}); the file is truncated or corrupt, or not a plain "
            "state_dict: re-save it with torch.save(model.state_dict()) or as .safetensors"
        ) from None
    except Exception as error:  # zip, pickle and storage errors all mean a damaged or foreign file
        raise CheckpointError(
            f"cannot read {path} ({_first_line(error)}); the file is truncated or corrupt, or not a PyTorch checkpoint"
        ) from None


def _unpickling_detail(error: pickle.UnpicklingError) -> str:
    found = _UNSAFE_OPERAND.search(str(error))
    return found.group(0) if found else _first_line(error)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict; save model.state_dict() instead")
    if not obj:
        raise CheckpointError(f"{path} holds no tensors; save model.state_dict() instead")
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path} has {key!r} of type {type(value).__name__}, not a tensor; save model.state_dict() instead"
            )
    return dict(obj)


def _is_curve(state: Mapping[str, Tensor]) -> bool:
    return any(_CURVE_KEY.search(key) for key in state)


def _strip_prefixes(state: dict[str, Tensor], path: Path, lightning: bool) -> dict[str, Tensor]:
    """Remove a Lightning system's attribute, then DDP / compile / `net.` prefixes shared by every key."""
    if lightning:
        groups = {key.split(".", 1)[0] for key in state}
        if len(groups) > 1 and "net" not in groups:
            raise CheckpointError(
                f"cannot tell which network in {path} to load (it holds {sorted(groups)}); pass the architecture"
            )
        group = "net" if "net" in groups else groups.pop()
        state = {key[len(group) + 1 :]: value for key, value in state.items() if key.startswith(group + ".")}
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                stripped = True
    return state


def _best_prefix(keys: Any, expected: Any) -> str:
    """The prefix `p` such that `p + name` is a key for the most names the template expects."""
    expected = set(expected)
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        for cut in range(len(parts)):
            if ".".join(parts[cut:]) in expected:
                prefix = ".".join(parts[:cut]) + "." if cut else ""
                counts[prefix] = counts.get(prefix, 0) + 1
    # most matches first, then the shortest prefix
    return min(counts, key=lambda prefix: (-counts[prefix], len(prefix)), default="")


def _fill_tied_aliases(state: dict[str, Tensor], template: nn.Module) -> None:
    """Give a tied tensor's missing aliases the stored value (safetensors' save_model keeps one name)."""
    names_of: dict[int, list[str]] = {}
    tensors = [*template.named_parameters(remove_duplicate=False), *template.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        names_of.setdefault(id(tensor), []).append(name)
    for names in names_of.values():
        present = [name for name in names if name in state]
        if present:
            for name in names:
                state.setdefault(name, state[present[0]])


def _plain_tensors(state_dict: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"cannot save {path}: {key!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        if value.untyped_storage().nbytes() > value.numel() * value.element_size():
            value = value.clone()  # a view of a larger tensor: do not write the whole storage
        tensors[key] = value
    return tensors


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors with no storage in common, as safetensors requires."""
    seen: set[int] = set()
    result = {}
    for key, value in tensors.items():
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen or not value.is_contiguous():
            value = value.clone(memory_format=torch.contiguous_format)
        seen.add(value.untyped_storage().data_ptr())
        result[key] = value
    return result


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
