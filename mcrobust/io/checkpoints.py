"""Read and write network weights safely: Lightning `.ckpt`, plain state_dicts and `.safetensors`.

A network to repair comes from an untrusted party, so pickles are only ever read with
`torch.load(weights_only=True)`: a file that needs arbitrary unpickling is refused before anything
in it runs. Every error is one line that names the file or tensor and says what to fix.

Checkpoints written by other code bases nest the weights in containers (`{'net': sd, 'acc': 0.9}`,
`{'state_dict': sd, 'optimizer': ...}`, `{'model': sd, 'model_ema': sd}`) and prefix the keys (`module.`,
`model.`, `_orig_mod.`); `load_weights` searches the mappings of tensors in the file and keeps the one that
fits the network.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcrobust.errors import CheckpointError, first_line
from mcrobust.io.files import atomic_torch_save, atomic_write_bytes
from mcrobust.io.trust import refused_global
from mcrobust.utils.checks import check_finite

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.", "model.")
"""Prefixes that DDP (`module.`), `torch.compile` (`_orig_mod.`), our systems (`net.`) and others put on keys."""

MAX_DEPTH = 4
"""How deep in nested containers (`{'checkpoint': {'model': {'module': sd}}}`) weights are searched for."""

_NOT_WEIGHTS = re.compile(r"optim|sched|scaler|^callbacks$|^loops$|^hyper_parameters$", re.IGNORECASE)
_TOKENS = re.compile(r"[^a-z0-9]+")

_CURVE_KEY = re.compile(r"(^|\.)bends\.\d+\.")
_UNSAFE_OPERAND = re.compile(r"Unsupported operand \S+")


def shape_of(tensor: Tensor) -> list[int]:
    """The shape as a plain list, the way messages print it (`[64, 3, 3, 3]`)."""
    return list(tensor.shape)


def load_weights(path: str | os.PathLike[str], template: nn.Module | None = None) -> dict[str, Tensor]:
    """Load a network's weights from a `.ckpt`, `.pt`/`.pth` or `.safetensors` file written by any code base.

    Every mapping of tensors in the file, up to `MAX_DEPTH` containers deep, is a candidate; values that are
    not tensors (epoch, accuracy, optimizer state) are ignored. With `template` the candidate that fits it is
    taken, its key prefixes (`module.`, `model.`, `_orig_mod.`, a system's attribute, ...) stripped. When
    several fit, the first one in this order wins: a model before an EMA copy (a container or key prefix
    with the word `ema`, as in `model_ema` or `ema.`), i.e. the weights as trained, as detectron2's
    checkpointer loads `model` by default (re-save the EMA alone to repair it); then the shallower; then the
    earlier in the file. Without `template` the candidate with the most tensors
    wins (ties in the same order) and prefixes shared by every key are stripped.

    Args:
        path: the checkpoint file.
        template: the network the weights are meant for; its keys decide which candidate and prefix to take.

    Returns:
        A state_dict on the CPU whose floating tensors are all finite; with `template`, exactly its keys.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, a curve, or holds nothing that fits `template`.
    """
    path = _existing_file(path)
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)
    candidates = _candidates(obj, path)
    if template is not None:
        state = _fitting(candidates, template, path, obj)
    else:
        chosen = min(candidates, key=lambda candidate: (-len(candidate.tensors), candidate.rank))
        lightning = "pytorch-lightning_version" in obj and chosen.where == ("state_dict",)
        state = _strip_prefixes(chosen.tensors, path, lightning)
    check_finite(state, str(path))
    return state


def match_state_dict(state_dict: Mapping[str, Tensor], template: nn.Module, source: str) -> dict[str, Tensor]:
    """Rename `state_dict` to the keys of `template` and check that every key and shape fits.

    The prefix to strip is the one under which most keys of the template are found, so `net.`,
    `module.`, `net.module.` or any other wrapper attribute is handled without a list of names; a prefix
    that every key of the template has (a wrapper such as `AdaptedNet`'s `net.`) is added where missing.

    Args:
        state_dict: weights, possibly with wrapper prefixes on the keys.
        template: the network they must fit.
        source: how messages name the weights, e.g. a path or "endpoint B".

    Returns:
        A new dict with exactly the keys of `template.state_dict()`.

    Raises:
        CheckpointError: naming the first missing, mismatched or unexpected tensor.
    """
    fit = _fit(state_dict, template, template.state_dict())
    if fit.problem is not None:
        raise CheckpointError(f"{source} {fit.problem}")
    return fit.state


@dataclass(frozen=True)
class _Candidate:
    """One mapping of tensors found in a checkpoint: where it is (the keys leading to it) and its tensors."""

    where: tuple[str, ...]
    tensors: dict[str, Tensor]
    order: int

    @property
    def rank(self) -> tuple[bool, int, int]:
        """Sort key of the tie-break: a model before an EMA copy, then the shallower, then the earlier."""
        return (any(_is_ema(key) for key in self.where), len(self.where), self.order)

    def describe(self) -> str:
        return "the top level" if not self.where else "".join(f"[{key!r}]" for key in self.where)


@dataclass(frozen=True)
class _Fit:
    """A state_dict renamed to a template's keys, how many keys matched, and the first problem (None: fits)."""

    state: dict[str, Tensor]
    matched: int
    problem: str | None


def _candidates(obj: Any, path: Path) -> list[_Candidate]:
    """Every mapping of tensors up to MAX_DEPTH containers deep, breadth first (so shallower first)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict; save model.state_dict() instead")
    found: list[_Candidate] = []
    queue: list[tuple[tuple[str, ...], Mapping[Any, Any]]] = [((), obj)]
    while queue:
        where, mapping = queue.pop(0)
        tensors = {key: value for key, value in mapping.items() if isinstance(key, str) and isinstance(value, Tensor)}
        if tensors:
            found.append(_Candidate(where, tensors, len(found)))
        if len(where) < MAX_DEPTH:
            queue += [
                ((*where, str(key)), value)
                for key, value in mapping.items()
                if isinstance(value, Mapping) and not _NOT_WEIGHTS.search(str(key))
            ]
    if not found:
        raise CheckpointError(f"{path} holds no tensors ({_top_level(obj)}); save model.state_dict() instead")
    for candidate in found:
        if _is_curve(candidate.tensors):
            raise CheckpointError(
                f"{path} is a curve checkpoint (it holds bends, not one network); give an endpoint's checkpoint, "
                "or export a point of the path first"
            )
    return found


def _fitting(
    candidates: list[_Candidate], template: nn.Module, path: Path, obj: Mapping[Any, Any]
) -> dict[str, Tensor]:
    """The state of the first candidate (in rank order) that fits `template`; else an error about the closest."""
    expected = template.state_dict()
    fits = [(candidate, _fit(candidate.tensors, template, expected)) for candidate in candidates]
    fitting = [(candidate, fit) for candidate, fit in fits if fit.problem is None]
    if fitting:
        return min(fitting, key=lambda pair: pair[0].rank)[1].state
    closest, fit = min(fits, key=lambda pair: (-pair[1].matched, pair[0].rank))
    if len(candidates) == 1 and not closest.where:  # a plain state_dict: its keys are the tensors' names
        raise CheckpointError(f"{path} {fit.problem}")
    raise CheckpointError(
        f"no weights in {path} fit the network ({_top_level(obj)}); the closest, {closest.describe()}, {fit.problem}"
    )


def _fit(state_dict: Mapping[str, Tensor], template: nn.Module, expected: Mapping[str, Tensor]) -> _Fit:
    """`state_dict` under the template's keys (best prefix stripped or added), with its first problem if any."""
    strip, add, matched = _best_alignment(state_dict.keys(), expected.keys())
    state = {add + key[len(strip) :]: value for key, value in state_dict.items() if key.startswith(strip)}
    _fill_tied_aliases(state, template)
    problem = _problem(state, expected)
    return _Fit({key: state[key] for key in expected if key in state}, matched, problem)


def _problem(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> str | None:
    """The first missing, mismatched or unexpected tensor, as the end of a message; None when all fit."""
    for key, reference in expected.items():
        if key not in state:
            return (
                f"lacks {key!r} of shape {shape_of(reference)} that the network expects; "
                "is it a checkpoint of this architecture?"
            )
        if state[key].shape != reference.shape:
            return (
                f"has {key!r} of shape {shape_of(state[key])}, the network expects {shape_of(reference)}; "
                "set the net's arguments (num_classes, width, ...) to those the checkpoint was trained with"
            )
    for key, value in state.items():
        if key not in expected:
            return (
                f"has {key!r} of shape {shape_of(value)} that the network does not have; "
                "is it a checkpoint of this architecture?"
            )
    return None


def _top_level(obj: Mapping[Any, Any], shown: int = 6) -> str:
    """'top-level keys: 'acc', 'net'' for messages, at most `shown` of them."""
    keys = [repr(key) for key in obj]
    listed = ", ".join(keys[:shown]) + (f", ... ({len(keys)} in all)" if len(keys) > shown else "")
    return f"top-level keys: {listed or 'none'}"


def _is_ema(name: str) -> bool:
    """Whether a container key or key prefix names an EMA copy (`ema`, `model_ema`, `ema_state_dict`, `ema.`)."""
    return "ema" in _TOKENS.split(name.lower())


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
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        atomic_write_bytes(path, save(_unshared(tensors), metadata={"format": "pt"}))
    else:
        atomic_torch_save(tensors, path)  # serialised in memory: the same bytes on a rerun, one line on a full disk
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
            f"cannot read {path} as safetensors ({first_line(error, limit=200)}); "
            "the file is truncated or corrupt, write it again"
        ) from None


def _read_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes; the failure itself is reported below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = refused_global(error)
        if needed:
            hint = " (Lightning: keep callables out of save_hyperparameters)" if path.suffix == ".ckpt" else ""
            raise CheckpointError(
                f"refusing to unpickle {path}: it needs {needed}, which could run code; "
                f"re-save it as a plain state_dict or .safetensors{hint}"
            ) from None
        raise CheckpointError(
            f"cannot read {path} ({_unpickling_detail(error)}); the file is truncated or corrupt, or not a plain "
            "state_dict: re-save it with torch.save(model.state_dict()) or as .safetensors"
        ) from None
    except Exception as error:  # zip, pickle and storage errors all mean a damaged or foreign file
        raise CheckpointError(
            f"cannot read {path} ({first_line(error, limit=200)}); "
            "the file is truncated or corrupt, or not a PyTorch checkpoint"
        ) from None


def _unpickling_detail(error: pickle.UnpicklingError) -> str:
    found = _UNSAFE_OPERAND.search(str(error))
    return found.group(0) if found else first_line(error, limit=200)


def _is_curve(state: Mapping[str, Tensor]) -> bool:
    return any(_CURVE_KEY.search(key) for key in state)


def _strip_prefixes(state: dict[str, Tensor], path: Path, lightning: bool) -> dict[str, Tensor]:
    """Remove a Lightning system's attribute, then DDP / compile / `net.` / `model.` prefixes shared by every key."""
    if lightning:
        groups = {key.split(".", 1)[0] for key in state}
        models = {group for group in groups if not _is_ema(group)} or groups  # an EMA copy only if alone
        if len(models) > 1 and "net" not in models:
            raise CheckpointError(
                f"cannot tell which network in {path} to load (it holds {sorted(groups)}); pass the architecture"
            )
        group = "net" if "net" in models else models.pop()
        state = {key[len(group) + 1 :]: value for key, value in state.items() if key.startswith(group + ".")}
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                stripped = True
    return state


def _best_alignment(keys: Iterable[str], expected: Iterable[str]) -> tuple[str, str, int]:
    """(strip, add, matched): `add + key[len(strip):]` is a template key for the most keys of the checkpoint.

    `add` is "" or a prefix every template key has (the attribute of a wrapper around the checkpoint's net).
    """
    keys, expected = list(keys), list(expected)
    best = ("", "", 0)
    for add in _shared_prefixes(expected):
        names = [name[len(add) :] for name in expected]
        strip, matched = _best_prefix(keys, names)
        if matched > best[2]:
            best = (strip, add, matched)
    return best


def _shared_prefixes(names: list[str]) -> list[str]:
    """The empty prefix and every dotted prefix that all names share, shortest first (`net.` for an AdaptedNet)."""
    split = [name.split(".")[:-1] for name in names]
    prefixes = [""]
    for depth in range(1, min((len(parts) for parts in split), default=0) + 1):
        heads = {tuple(parts[:depth]) for parts in split}
        if len(heads) > 1:
            break
        prefixes.append(".".join(heads.pop()) + ".")
    return prefixes


def _best_prefix(keys: Iterable[str], expected: Iterable[str]) -> tuple[str, int]:
    """The prefix `p` such that `p + name` is a key for the most names the template expects, and that count.

    Ties go to a prefix that does not name an EMA copy, then to the shortest, then alphabetically.
    """
    expected = set(expected)
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        for cut in range(len(parts)):
            if ".".join(parts[cut:]) in expected:
                prefix = ".".join(parts[:cut]) + "." if cut else ""
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return "", 0
    prefix = min(counts, key=lambda prefix: (-counts[prefix], _is_ema(prefix), len(prefix), prefix))
    return prefix, counts[prefix]


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
