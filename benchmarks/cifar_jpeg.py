"""CIFAR-10 as JPEG zips (`../shared/data/cifar10-jpeg/{train,test}.zip`) read straight into uint8 arrays.

The zips hold `<split>/<class>/NNNN.jpg` (ImageFolder layout; the sorted class names are CIFAR-10's order). Reading
the members into memory and decoding them in threads (PIL releases the GIL) takes seconds for all 60,000 images,
faster than extracting them to a folder and reading it back; nothing is written to disk.
"""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mcrobust.data.sources import ArraySplit
from mcrobust.errors import DataError

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _members(archive: zipfile.ZipFile, split: str, per_class: int | None) -> list[tuple[str, str]]:
    """(member name, class) of `split`, sorted by class then file name, the first `per_class` of each class."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for name in archive.namelist():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == split and parts[2].lower().endswith((".jpg", ".jpeg", ".png")):
            by_class[parts[1]].append(name)
    return [(name, label) for label in sorted(by_class) for name in sorted(by_class[label])[:per_class]]


def read_split(root: str | Path, split: str, per_class: int | None = None, threads: int = 8) -> ArraySplit:
    """One split (`train` or `test`) of `root/<split>.zip` as an ArraySplit (uint8 N,H,W,C; labels by class folder).

    Args:
        root: the folder holding the zips.
        split: 'train' or 'test'.
        per_class: keep the first this many images of each class (None: all).
        threads: decoding threads.
    """
    path = Path(root) / f"{split}.zip"
    if not path.is_file():
        raise DataError(f"{path} not found: give the folder holding train.zip and test.zip (its README)")
    with zipfile.ZipFile(path) as archive:
        members = _members(archive, split, per_class)
        if not members:
            raise DataError(f"{path} holds no {split}/<class>/<image> members")
        payloads = [archive.read(name) for name, _ in members]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        images = list(pool.map(_decode, payloads, chunksize=256))
    classes = tuple(sorted({label for _, label in members}))
    labels = np.asarray([classes.index(label) for _, label in members], dtype=np.int64)
    return ArraySplit(np.stack(images), labels, classes)


def synthetic_split(count: int, seed: int = 0, classes: int = 10) -> ArraySplit:
    """Random CIFAR-sized images whose mean brightness encodes the class (learnable), when no zips are at hand."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    base = labels[:, None, None, None] * (200 / classes) + 25
    images = np.clip(base + rng.normal(0, 20, (count, 32, 32, 3)), 0, 255).astype(np.uint8)
    return ArraySplit(images, labels.astype(np.int64), tuple(str(c) for c in range(classes)))
