"""BadNets-style poisoning (all-to-one, Zhao et al. 2020): which training images get the trigger, the poisoned copy of
a data set, the triggered test set and the attack success rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcrobust.data.bonafide import allocate_proportional, as_labels
from mcrobust.errors import ConfigError, DataError
from mcrobust.threats.triggers import Trigger, check_uint8


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
    labels = as_labels(labels)
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
    images, labels = check_uint8(images), as_labels(labels)
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
        trigger: the trigger to stamp (:class:`PatchTrigger`, :class:`BlendTrigger`, :class:`MaskedTrigger`, ...).
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

    Target-class images are left out, so the attack success rate has no floor from them (Zhao et al. 2020).

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
