"""Data sets read into memory as uint8 arrays (N, H, W, C) plus int64 labels.

Readers for the real on-disk formats (CIFAR-10 python batches, SVHN .mat files, torchvision's ImageFolder
layout) and the embedded default, scikit-learn's bundled handwritten digits, which needs no download.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcrobust.errors import ConfigError, DataError
from mcrobust.io.trust import NUMPY_ARRAYS, RestrictedUnpickler, refused_global

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
DATASETS = ("digits", "cifar10", "svhn", "image_folder")
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError)
"""What PIL raises for an empty, foreign, truncated or damaged file (plus its DecompressionBombError)."""


@dataclass(frozen=True)
class ArraySplit:
    """One split of a data set in memory: images uint8 (N, H, W, C), labels int64 (N,), class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")


def _read_cifar_batch(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            batch = RestrictedUnpickler(handle, NUMPY_ARRAYS, encoding="latin1").load()  # never runs the file's code
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as error:
        needs = refused_global(error)
        if needs is not None:
            raise DataError(
                f"{path} is not a plain CIFAR-10 batch (it needs {needs} to unpickle); refusing it"
            ) from None
        raise DataError(f"{path} is truncated or corrupt ({error}); delete it and download again") from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict with 'data' and 'labels'")
    return batch


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


def load_cifar10(root: str | Path, split: str = "train", download: bool = False) -> ArraySplit:
    """CIFAR-10 from torchvision's python-batch layout `root/cifar-10-batches-py/`."""
    folder = Path(root) / "cifar-10-batches-py"
    names = CIFAR10_TRAIN_FILES if split == "train" else ("test_batch",)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing and download:
        _download_cifar10(Path(root))
        missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 not found in {folder}: expected {', '.join(names)}; set data.download: true or data.root"
        )
    batches = [_read_cifar_batch(folder / name) for name in names]
    data = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    return ArraySplit(np.ascontiguousarray(data.transpose(0, 2, 3, 1)), labels, CIFAR10_CLASSES)


def load_svhn(root: str | Path, split: str = "train", download: bool = False) -> ArraySplit:
    """SVHN from torchvision's layout `root/{train,test,extra}_32x32.mat` (label 10 means digit 0)."""
    path = Path(root) / f"{split}_32x32.mat"
    if not path.is_file() and download:
        from torchvision.datasets import SVHN

        SVHN(str(root), split=split, download=True)
    if not path.is_file():
        raise DataError(f"SVHN not found: expected {path}; set data.download: true or data.root")
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        images = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2))
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
    except (KeyError, ValueError, OSError) as error:
        raise DataError(f"{path} is not an SVHN .mat file with 'X' and 'y' ({error})") from None
    return ArraySplit(images, labels, tuple(str(d) for d in range(10)))


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ArraySplit:
    """scikit-learn's bundled 8x8 digits (1,797 images), up-sampled 4x to 32x32x3 uint8, seeded stratified split.

    The embedded default: it ships inside scikit-learn, so a first command works offline.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    pixels = pixels.repeat(4, axis=1).repeat(4, axis=2)  # nearest-neighbour 8x8 -> 32x32
    images = np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=3))
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    chosen = np.sort(train_idx if split == "train" else test_idx)
    return ArraySplit(images[chosen], labels[chosen], tuple(str(d) for d in range(10)))


def load_image_folder(
    root: str | Path, split: str = "train", image_size: int | None = None, skip_unreadable: bool = False
) -> ArraySplit:
    """Images in torchvision's ImageFolder layout `root/<split>/<class>/<image>`, read into memory as RGB.

    Labels follow the sorted class folder names, so the other split's class folders, when it exists, must be the
    same: a typo (`three` next to `3`) or a class missing in one split would otherwise shift labels silently.

    Args:
        root: the folder holding `train/` and `test/`.
        split: 'train' or 'test'.
        image_size: resize every image to this square size (None: keep it; then all must have one size).
        skip_unreadable: leave out (with a warning) files that cannot be decoded instead of stopping at the first.
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder

    unreadable = (*_UNREADABLE, Image.DecompressionBombError)
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"image folder not found: expected {folder}/<class>/<image files>")
    check_split_classes(Path(root), split)
    try:
        dataset = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as error:
        raise DataError(f"{folder}: {error}") from None
    images, labels, skipped = [], [], []
    for path, label in dataset.samples:
        try:
            images.append(_read_rgb(Path(path), image_size))
        except unreadable as error:
            if not skip_unreadable:
                raise DataError(
                    f"cannot read {path} as an image ({_image_error(Path(path), error)}); replace or delete it, "
                    "or set data.skip_unreadable: true to leave unreadable files out"
                ) from None
            skipped.append(path)
            continue
        labels.append(label)
    _report_skipped(folder, skipped, labels, dataset.classes)
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise DataError(f"{folder} holds images of several sizes {sorted(shapes)[:3]}; set data.image_size")
    return ArraySplit(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(dataset.classes))


def _read_rgb(path: Path, image_size: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")  # decodes the whole file: a truncated one fails here
    if image_size is not None and rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _image_error(path: Path, error: BaseException) -> str:
    if path.stat().st_size == 0:
        return "the file is empty"
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:120]


def _report_skipped(folder: Path, skipped: list[str], labels: list[int], classes: list[str]) -> None:
    """Warn about skipped files; refuse a split that skipping left without any image of a class."""
    if not skipped:
        return
    empty = sorted(set(range(len(classes))) - set(labels))
    if empty:
        names = ", ".join(classes[index] for index in empty)
        raise DataError(f"{folder}: no readable image left in class folder(s) {names} after skipping unreadable files")
    warnings.warn(
        f"data.skip_unreadable: left out {len(skipped)} unreadable file(s) in {folder}, the first {skipped[0]}",
        stacklevel=3,
    )


def class_folders(folder: Path) -> list[str]:
    """The class names ImageFolder finds in `folder`: its sub-folders, sorted."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def check_split_classes(root: Path, split: str) -> None:
    """Raise DataError naming the class folders that only one of `root/train` and `root/test` has."""
    other = "test" if split == "train" else "train"
    if not (root / other).is_dir():
        return
    mine, theirs = set(class_folders(root / split)), set(class_folders(root / other))
    if mine == theirs:
        return
    only = [
        f"only in {name}/: {', '.join(sorted(names))}"
        for name, names in ((split, mine - theirs), (other, theirs - mine))
        if names
    ]
    raise DataError(
        f"the class folders of {root}/train and {root}/test differ ({'; '.join(only)}); labels follow the sorted "
        "folder names, so rename or add folders until both splits have the same classes (data.root)"
    )


def load_split(
    dataset: str,
    split: str,
    root: str | Path = "data",
    download: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    skip_unreadable: bool = False,
) -> ArraySplit:
    """Load one split ('train' or 'test') of a named data set (`skip_unreadable`: image_folder only)."""
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'test'")
    if dataset == "digits":
        return load_digits(split, seed=seed)
    if dataset == "cifar10":
        return load_cifar10(root, split, download)
    if dataset == "svhn":
        return load_svhn(root, split, download)
    if dataset == "image_folder":
        return load_image_folder(root, split, image_size, skip_unreadable)
    raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0,1] units, for the nets' Normalize layer."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = np.maximum(pixels.std(axis=0), 1e-3)
    return tuple(float(v) for v in pixels.mean(axis=0)), tuple(float(v) for v in std)
