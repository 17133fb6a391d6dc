"""BadNets-style backdoors: triggers, poisoned training arrays and the triggered test set (PAPER.md §3).

Images are uint8 arrays (N, H, W, C) in 0..255; nets see float tensors (N, C, H, W) in [0, 1]. Every trigger works
in both spaces, so it can be stamped on stored arrays or after augmentation, with the same result up to uint8
rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from mcrobust.data.bonafide import _as_labels, allocate_proportional
from mcrobust.errors import ConfigError, DataError

__all__ = [
    "BlendTrigger",
    "PatchTrigger",
    "PoisonedArrays",
    "Trigger",
    "attack_success_rate",
    "poison",
    "poison_indices",
    "triggered_eval_set",
]

PATTERNS = ("solid", "checkerboard")


@runtime_checkable
class Trigger(Protocol):
    """What poisoning and evaluation need from a trigger: the same stamp on uint8 arrays and on [0,1] tensors."""

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Return triggered copies of uint8 images (N, H, W, C) or (H, W, C)."""
        ...

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Return triggered copies of float images (N, C, H, W) or (C, H, W) in [0, 1]."""
        ...


def _check_uint8(images: np.ndarray) -> np.ndarray:
    """Check for uint8 images (N, H, W, C) or (H, W, C) and return them as an array."""
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise DataError(f"images must be uint8 (N, H, W, C) or (H, W, C), got {array.dtype} of shape {array.shape}")
    return array


def _check_tensor(x: torch.Tensor) -> None:
    """Check for float images (N, C, H, W) or (C, H, W)."""
    if not torch.is_floating_point(x) or x.dim() not in (3, 4):
        raise DataError(f"x must be a float tensor (N, C, H, W) or (C, H, W), got {x.dtype} of shape {tuple(x.shape)}")


class PatchTrigger:
    """A small square stamped onto the image: the BadNets trigger of the paper (3x3 white, bottom right).

    Args:
        size: side of the square in pixels.
        row: top row of the square; None puts it at the bottom with a 1-pixel margin (H - size - 1).
        col: left column of the square; None puts it at the right with a 1-pixel margin (W - size - 1).
        value: pixel value of the square in 0..255, the same in every channel.
        pattern: "solid" (every pixel = value) or "checkerboard" (value and 0 alternating, value top left).
    """

    def __init__(
        self, size: int = 3, row: int | None = None, col: int | None = None, value: int = 255, pattern: str = "solid"
    ) -> None:
        if size < 1:
            raise ConfigError(f"patch size must be at least 1, got {size}")
        if not 0 <= value <= 255:
            raise ConfigError(f"patch value must be in 0..255, got {value}")
        if pattern not in PATTERNS:
            raise ConfigError(f"unknown patch pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
        if (row is not None and row < 0) or (col is not None and col < 0):
            raise ConfigError(f"patch row and col must be >= 0, got row={row}, col={col}")
        self.size, self.row, self.col, self.value, self.pattern = size, row, col, value, pattern

    def __repr__(self) -> str:
        return (
            f"PatchTrigger(size={self.size}, row={self.row}, col={self.col}, value={self.value}, "
            f"pattern={self.pattern!r})"
        )

    def position(self, height: int, width: int) -> tuple[int, int]:
        """Return the (row, col) of the square's top-left pixel in an image of this size; ConfigError if outside."""
        row = height - self.size - 1 if self.row is None else self.row
        col = width - self.size - 1 if self.col is None else self.col
        if row < 0 or col < 0 or row + self.size > height or col + self.size > width:
            raise ConfigError(
                f"a {self.size}x{self.size} patch at row {row}, col {col} does not fit a {height}x{width} image; "
                "choose a smaller size or another position"
            )
        return row, col

    def mask(self) -> np.ndarray:
        """Return the square's pixel values, uint8 (size, size)."""
        if self.pattern == "solid":
            return np.full((self.size, self.size), self.value, dtype=np.uint8)
        grid = np.add.outer(np.arange(self.size), np.arange(self.size)) % 2 == 0
        return np.where(grid, self.value, 0).astype(np.uint8)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Return a copy of uint8 images (N, H, W, C) or (H, W, C) with the square in every channel."""
        out = _check_uint8(images).copy()
        row, col = self.position(out.shape[-3], out.shape[-2])
        out[..., row : row + self.size, col : col + self.size, :] = self.mask()[:, :, None]
        return out

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Return a copy of float images (N, C, H, W) or (C, H, W) in [0, 1] with the square in every channel."""
        _check_tensor(x)
        row, col = self.position(x.shape[-2], x.shape[-1])
        out = x.clone()
        patch = torch.as_tensor(self.mask(), dtype=x.dtype, device=x.device) / 255.0
        out[..., row : row + self.size, col : col + self.size] = patch
        return out


class BlendTrigger:
    """A whole-image blend x' = (1 - alpha) x + alpha * pattern (Chen et al. 2017), an alternative to the patch.

    Args:
        alpha: blend weight of the pattern, in [0, 1].
        pattern_path: image file of the pattern (resized to the data's H x W); None draws seeded uniform noise.
        seed: seed of the noise pattern (unused with a file).
    """

    def __init__(self, alpha: float = 0.1, pattern_path: str | None = None, seed: int = 0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"blend alpha must be in [0, 1], got {alpha}")
        self.alpha, self.pattern_path, self.seed = float(alpha), pattern_path, seed
        self._source: np.ndarray | None = None
        if pattern_path is not None:
            if not Path(pattern_path).is_file():
                raise DataError(f"blend pattern file {pattern_path} does not exist")
            try:
                with Image.open(pattern_path) as image:
                    self._source = np.asarray(image.convert("RGB"), dtype=np.uint8)
            except OSError as error:
                raise DataError(f"blend pattern file {pattern_path} is not a readable image ({error})") from None
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        return f"BlendTrigger(alpha={self.alpha}, pattern_path={self.pattern_path!r}, seed={self.seed})"

    def pattern(self, height: int, width: int, channels: int) -> np.ndarray:
        """Return the pattern as uint8 (H, W, C) for images of this shape (the same array for the same shape)."""
        key = (height, width, channels)
        if key not in self._cache:
            self._cache[key] = self._make_pattern(height, width, channels)
        return self._cache[key]

    def _make_pattern(self, height: int, width: int, channels: int) -> np.ndarray:
        """Resize the file's pattern to the shape, or draw seeded noise of it."""
        if self._source is None:
            return np.random.default_rng(self.seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        if channels not in (1, 3):
            raise ConfigError(f"a pattern file blends into 1- or 3-channel images, got {channels} channels")
        image = Image.fromarray(self._source).resize((width, height), Image.Resampling.BILINEAR)
        if channels == 1:
            image = image.convert("L")
        return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Return blended copies of uint8 images (N, H, W, C) or (H, W, C), rounded to the nearest integer."""
        array = _check_uint8(images)
        pattern = self.pattern(*array.shape[-3:]).astype(np.float64)
        blended = (1.0 - self.alpha) * array + self.alpha * pattern
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Return blended copies of float images (N, C, H, W) or (C, H, W) in [0, 1]."""
        _check_tensor(x)
        channels, height, width = x.shape[-3:]
        pattern = torch.as_tensor(self.pattern(height, width, channels), device=x.device).permute(2, 0, 1)
        return (1.0 - self.alpha) * x + self.alpha * (pattern.to(x.dtype) / 255.0)


@dataclass(frozen=True)
class PoisonedArrays:
    """A poisoned copy of a data set.

    Args:
        images: uint8 (N, H, W, C), triggered where poisoned.
        labels: int64 (N,), the target where poisoned.
        indices: sorted int64 positions of the poisoned images.
    """

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


def _check_target(target: int) -> None:
    """Check that the target label is a non-negative integer."""
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
        raise ConfigError(f"target label must be a non-negative integer, got {target!r}")


def poison_indices(labels: np.ndarray, target: int, rate: float, seed: int = 0) -> np.ndarray:
    """Choose exactly round(rate * n_non_target) images to poison, never from the target class; sorted int64.

    Each non-target class gives its share (largest-remainder rounding), as the official code poisons the same
    fraction of every class; a seeded draw picks the images inside each class.

    Args:
        labels: int labels, shape (N,).
        target: the attacker's label; its images are never poisoned.
        rate: fraction of the non-target images to poison, in [0, 1].
        seed: seed of the draw.
    """
    _check_target(target)
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"poisoning rate must be in [0, 1], got {rate}")
    labels = _as_labels(labels)
    candidates = np.flatnonzero(labels != target)
    total = round(rate * len(candidates))
    if total == 0:
        return np.empty(0, dtype=np.int64)
    classes, counts = np.unique(labels[candidates], return_counts=True)
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == cls), size=int(k), replace=False)
        for cls, k in zip(classes, allocate_proportional(counts, total), strict=True)
    ]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _check_pair(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check that images are uint8 NHWC with one label each."""
    images, labels = _check_uint8(images), _as_labels(labels)
    if images.ndim != 4 or len(images) != len(labels):
        raise DataError(f"need uint8 images (N, H, W, C) with N labels, got {images.shape} and {labels.shape}")
    return images, labels


def poison(
    images: np.ndarray, labels: np.ndarray, trigger: Trigger, target: int, rate: float, seed: int = 0
) -> PoisonedArrays:
    """Return a poisoned copy of a data set: chosen non-target images get the trigger and the target label.

    The inputs are never changed, so the clean arrays stay available for the bonafide set and evaluation.

    Args:
        images: uint8 (N, H, W, C).
        labels: int labels, shape (N,).
        trigger: the trigger to stamp (:class:`PatchTrigger`, :class:`BlendTrigger`).
        target: the attacker's label.
        rate: fraction of the non-target images to poison, in [0, 1].
        seed: seed of the choice of images.
    """
    images, labels = _check_pair(images, labels)
    indices = poison_indices(labels, target, rate, seed)
    out_images, out_labels = images.copy(), labels.astype(np.int64, copy=True)
    if indices.size:
        out_images[indices] = trigger.apply(images[indices])
        out_labels[indices] = target
    return PoisonedArrays(images=out_images, labels=out_labels, indices=indices)


def triggered_eval_set(
    images: np.ndarray, labels: np.ndarray, trigger: Trigger, target: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build the attack-success test set: every non-target image with the trigger, labelled with the target.

    Target-class images are left out, so the attack success rate has no floor from them (PAPER.md §3).

    Args:
        images: uint8 (N, H, W, C), clean.
        labels: int labels, shape (N,).
        trigger: the trigger to stamp.
        target: the attacker's label.

    Returns:
        (triggered images, labels all equal to target, source_index: the images' positions in the input).
    """
    _check_target(target)
    images, labels = _check_pair(images, labels)
    source = np.flatnonzero(labels != target).astype(np.int64)
    triggered = trigger.apply(images[source])
    return triggered, np.full(len(source), target, dtype=np.int64), source


def attack_success_rate(predictions: np.ndarray | torch.Tensor, target: int) -> float:
    """Return the fraction of predictions on the triggered set that equal the target (class ids or logits).

    Args:
        predictions: predicted class ids (N,), or logits (N, K) reduced by argmax.
        target: the attacker's label.
    """
    if isinstance(predictions, torch.Tensor):
        predictions = predictions.detach().cpu().numpy()
    predictions = np.asarray(predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    if predictions.size == 0:
        raise DataError("no triggered predictions to score; the triggered set is empty")
    return float(np.mean(predictions == target))
