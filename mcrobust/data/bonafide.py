"""Bonafide subsets: the small clean, labelled set that repairs a tampered model (Zhao et al. 2020).

Indices are seeded, class-stratified and exact in size, and they are written next to the run's logs and read
back, so a repair run, its baselines and its evaluation always see the same images.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mcrobust.errors import ConfigError, DataError

__all__ = [
    "allocate_proportional",
    "bonafide_indices",
    "fraction_to_size",
    "load_indices",
    "read_bonafide_parts",
    "save_indices",
    "split_stratified",
]


def allocate_proportional(counts: np.ndarray, size: int) -> np.ndarray:
    """Split ``size`` into per-class counts proportional to ``counts`` by largest-remainder rounding.

    Integer arithmetic keeps the result exact; ties in the remainder go to the lower class position, so the same
    inputs always give the same allocation. The counts sum to ``size`` and never exceed ``counts``.

    Args:
        counts: number of images of each class (int, 1-D, positive total).
        size: how many images to allocate in total, 0 <= size <= counts.sum().
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    quotas = size * counts
    base = quotas // total
    remainders = quotas % total
    missing = size - int(base.sum())
    # np.lexsort sorts by the last key first: largest remainder, then lowest class position.
    order = np.lexsort((np.arange(len(counts)), -remainders))
    base[order[:missing]] += 1
    return base


def as_labels(labels: np.ndarray) -> np.ndarray:
    """Check that labels are a 1-D integer array and return them as int64."""
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"labels must be a 1-D integer array, got dtype {array.dtype} and shape {array.shape}")
    return array.astype(np.int64, copy=False)


def _class_counts(labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the classes to stratify over and their image counts; every class must be present."""
    if num_classes is None:
        return np.unique(labels, return_counts=True)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise DataError(f"label {bad} is outside 0..{num_classes - 1}; check num_classes={num_classes}")
    counts = np.bincount(labels, minlength=num_classes)
    absent = np.flatnonzero(counts == 0)
    if absent.size:
        raise ConfigError(
            f"class {absent[0]} has no image in the pool of {len(labels)}; use a pool that holds all "
            f"{num_classes} classes or set num_classes to the classes the data really has"
        )
    return np.arange(num_classes), counts


def _smallest_size_covering(counts: np.ndarray) -> int:
    """Return the smallest size from which on every larger size gives each class at least one image.

    Largest-remainder rounding is not monotonic in the size, so search down from the size at which even the
    rarest class has a quota of at least one and stop at the first size that fails.
    """
    size = min(int(counts.sum()), -(-int(counts.sum()) // int(counts.min())))
    while size > len(counts) and allocate_proportional(counts, size - 1).min() >= 1:
        size -= 1
    return size


def bonafide_indices(labels: np.ndarray, size: int, seed: int = 0, num_classes: int | None = None) -> np.ndarray:
    """Draw a seeded, class-stratified subset of exactly ``size`` images; return sorted int64 indices.

    Per-class counts follow the class frequencies of the pool (largest-remainder rounding, ties to the lower class
    id), then a seeded draw without replacement picks the images inside each class (Zhao et al. 2020).

    Args:
        labels: int labels of the pool, shape (N,).
        size: number of images to draw, 1 <= size <= N.
        seed: seed of the draw; the same seed gives the same indices.
        num_classes: if given, every class 0..num_classes-1 must be in the pool; else the classes present count.

    Raises:
        ConfigError: size out of range, a class absent from the pool, or a class that would get no image.
    """
    labels = as_labels(labels)
    pool = len(labels)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ConfigError(f"bonafide size must be a whole number of images, got {size!r}")
    if size < 1:
        raise ConfigError(f"bonafide size must be at least 1, got {size}")
    if size > pool:
        raise ConfigError(f"bonafide size {size} exceeds the {pool} images in the pool; choose at most {pool}")
    classes, counts = _class_counts(labels, num_classes)
    allocation = allocate_proportional(counts, size)
    if allocation.min() == 0:
        empty = classes[int(np.argmin(allocation))]
        raise ConfigError(
            f"bonafide size {size} leaves class {empty} without an image; choose a size of at least "
            f"{_smallest_size_covering(counts)} so that every class gets one"
        )
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == cls), size=int(k), replace=False)
        for cls, k in zip(classes, allocation, strict=True)
    ]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def fraction_to_size(fraction: float, pool_size: int) -> int:
    """Turn a fraction of a pool into a number of images: round(fraction * pool_size), at least 1.

    Args:
        fraction: share of the pool, in (0, 1].
        pool_size: number of images in the pool, at least 1.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if pool_size < 1:
        raise ConfigError(f"the pool is empty (pool_size={pool_size}); there is nothing to take a fraction of")
    return max(1, round(fraction * pool_size))


def split_stratified(
    labels: np.ndarray, first_size_or_fraction: int | float, seed: int = 0, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split a labelled set into two disjoint, class-stratified parts; return their sorted indices.

    Used for the paper's protocol (half of the test split is the bonafide pool, the other half the evaluation
    set), for train/test splits of the embedded data, and for holding out bonafide images to choose t.

    Args:
        labels: int labels of the set, shape (N,).
        first_size_or_fraction: size of the first part (int) or its share of N (float in (0, 1]).
        seed: seed of the draw.
        num_classes: passed on to :func:`bonafide_indices`.
    """
    labels = as_labels(labels)
    if isinstance(first_size_or_fraction, bool):
        raise ConfigError(f"the first part's size must be an int or a fraction, got {first_size_or_fraction}")
    if isinstance(first_size_or_fraction, (float, np.floating)):
        size = fraction_to_size(float(first_size_or_fraction), len(labels))
    else:
        size = int(first_size_or_fraction)
    first = bonafide_indices(labels, size, seed=seed, num_classes=num_classes)
    keep = np.ones(len(labels), dtype=bool)
    keep[first] = False
    return first, np.flatnonzero(keep).astype(np.int64)


def _json_default(value: Any) -> Any:
    """Turn numpy scalars and paths in the metadata into plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} cannot be written as JSON")


def save_indices(path: str | os.PathLike[str], indices: np.ndarray, meta: dict[str, Any] | None = None) -> None:
    """Write indices and their provenance to a JSON file atomically (temporary file, then os.replace).

    A crash mid-write never leaves a truncated file that a later run would read back as a different subset.

    Args:
        path: destination file; missing parent folders are created.
        indices: int indices, 1-D.
        meta: JSON-serialisable extra keys (seed, size, source, ...); must not contain "indices".
    """
    meta = dict(meta or {})
    if "indices" in meta:
        raise ConfigError("meta must not contain the key 'indices'; it is reserved for the indices themselves")
    payload = {"indices": [int(i) for i in np.asarray(indices).ravel()], **meta}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=1, default=_json_default)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_indices(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read indices written by :func:`save_indices`; return (int64 indices, the other keys).

    Raises:
        DataError: the file is missing, is not JSON, or has no list of non-negative integer "indices".
    """
    if os.path.isdir(path):
        raise DataError(f"index file {path} is a folder; give the bonafide_indices.json file inside it")
    try:
        with open(path, encoding="utf-8") as stream:
            payload = json.load(stream)
    except FileNotFoundError:
        raise DataError(f"index file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"index file {path} is not valid JSON ({error}); delete it or restore it") from None
    raw = payload.get("indices") if isinstance(payload, dict) else None
    valid = isinstance(raw, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw)
    if not valid:
        raise DataError(f"index file {path} has no list of non-negative integer 'indices'; delete it or restore it")
    meta = {key: value for key, value in payload.items() if key != "indices"}
    return np.asarray(raw, dtype=np.int64), meta


def _index_list(raw: Any) -> np.ndarray | None:
    """A list of non-negative ints as int64, or None when it is not one."""
    valid = isinstance(raw, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw)
    return np.asarray(raw, dtype=np.int64) if valid else None


def read_bonafide_parts(path: str | os.PathLike[str]) -> tuple[tuple[np.ndarray, np.ndarray | None], dict[str, Any]]:
    """Read a run's `bonafide_indices.json`: ((train, holdout) positions in the pool, metadata).

    A file without "train"/"holdout" (an older run) gives all its indices as the train part and None as holdout.

    Raises:
        DataError: the file is missing, a folder, not valid, has repeated indices, or parts that share images.
    """
    indices, meta = load_indices(path)
    if "train" not in meta:
        if len(np.unique(indices)) != len(indices):
            raise DataError(f"index file {path} repeats indices in its 'indices' list; every image must appear once")
        return (indices, None), meta
    train, holdout = _index_list(meta.get("train")), _index_list(meta.get("holdout", []))
    if train is None or holdout is None:
        raise DataError(f"index file {path} has 'train' or 'holdout' entries that are not lists of indices")
    for name, part in (("train", train), ("holdout", holdout), ("indices", indices)):
        if len(np.unique(part)) != len(part):
            raise DataError(f"index file {path} repeats indices in its {name!r} list; every image must appear once")
    shared = np.intersect1d(train, holdout).size
    if shared:
        raise DataError(f"index file {path}: its train and holdout parts share {shared} images; write it again")
    return (train, holdout), {key: value for key, value in meta.items() if key not in ("train", "holdout")}
