"""Which image plays which role in a run: the bonafide subset's settings and parts, and one role per image.

The bonafide subset (Zhao et al. 2020) is split into a train part and a holdout part (images that choose a point on
the path without the trigger). Its parts are drawn fresh or read back from a run's `bonafide_indices.json`, and
every role (bonafide train, holdout, evaluation, injection sets) must use its own images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mcrobust.data.bonafide import bonafide_indices, fraction_to_size, read_bonafide_parts, split_stratified
from mcrobust.errors import ConfigError

__all__ = [
    "BonafideSettings",
    "Parts",
    "Roles",
    "check_disjoint_roles",
    "draw_parts",
    "read_parts",
    "split_holdout",
    "stratified_draw",
]

Parts = tuple[np.ndarray, np.ndarray]
"""(train, holdout) positions in the bonafide pool."""
Roles = dict[str, tuple[str, np.ndarray]]
"""Image roles by name, each as (split name, positions in that split)."""
MATCHING_METADATA = ("dataset", "pool", "pool_size", "split_seed")
"""Metadata of a saved indices file that must equal this run's: the same positions mean the same images."""


@dataclass
class BonafideSettings:
    """The small clean, labelled subset that repair and baselines may use (Zhao et al. 2020).

    Args:
        size: number of bonafide images (exclusive with fraction); None with no fraction and no indices_path: no
            subset is drawn (the pool still decides the evaluation set).
        fraction: bonafide size as a fraction of the pool, in (0, 1].
        seed: seed of the stratified bonafide draw and of its holdout split.
        pool: 'train' draws from the training split; 'test_half' (the paper's protocol) from one half of the test
            split, the other half being the evaluation set.
        indices_path: read the bonafide train and holdout parts from this JSON file (a run's
            `bonafide_indices.json`); its metadata must match this config (dataset, pool, split seed, sizes).
        holdout_size: bonafide images held out from training, to choose a point on the path without the trigger.
    """

    size: int | None = None
    fraction: float | None = None
    seed: int = 0
    pool: Literal["train", "test_half"] = "train"
    indices_path: str | None = None
    holdout_size: int = 0

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 1:
            raise ConfigError(f"data.bonafide.size must be >= 1, got {self.size}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"data.bonafide.fraction must be in (0, 1], got {self.fraction}")
        if self.size is not None and self.fraction is not None:
            raise ConfigError("set data.bonafide.size or data.bonafide.fraction, not both")
        if self.holdout_size < 0:
            raise ConfigError(f"data.bonafide.holdout_size must be >= 0, got {self.holdout_size}")
        if self.pool not in ("train", "test_half"):
            raise ConfigError(f"data.bonafide.pool must be 'train' or 'test_half', got {self.pool!r}")

    @property
    def picks_images(self) -> bool:
        """Whether these settings choose a subset: a size, a fraction or a saved indices file."""
        return self.size is not None or self.fraction is not None or bool(self.indices_path)


def draw_parts(settings: BonafideSettings, labels: np.ndarray, num_classes: int) -> Parts | None:
    """A fresh seeded, stratified bonafide subset of the pool (its `labels`), split into (train, holdout).

    Returns None when the settings give no size or fraction.
    """
    size = settings.size
    if size is None and settings.fraction is not None:
        size = fraction_to_size(settings.fraction, len(labels))
    if size is None:
        return None
    chosen = bonafide_indices(labels, size, seed=settings.seed, num_classes=num_classes)
    return split_holdout(settings, labels, chosen)


def split_holdout(settings: BonafideSettings, labels: np.ndarray, chosen: np.ndarray) -> Parts:
    """Hold `settings.holdout_size` of the pool positions `chosen` out; the part trained on is a stratified draw."""
    held_out = settings.holdout_size
    if held_out == 0:
        return chosen, chosen[:0]
    if held_out >= len(chosen):
        raise ConfigError(
            f"data.bonafide.holdout_size {held_out} leaves none of the {len(chosen)} bonafide images to train on; "
            "choose a smaller data.bonafide.holdout_size"
        )
    try:
        rest, held = split_stratified(labels[chosen], len(chosen) - held_out, seed=settings.seed)
    except ConfigError:
        raise ConfigError(
            f"data.bonafide.holdout_size {held_out} leaves {len(chosen) - held_out} of the {len(chosen)} bonafide "
            "images to train on, too few to give every class one; choose a smaller data.bonafide.holdout_size or a "
            "larger data.bonafide.size"
        ) from None
    return chosen[rest], chosen[held]


def read_parts(settings: BonafideSettings, labels: np.ndarray, expected: dict[str, Any]) -> Parts:
    """Read (train, holdout) from `settings.indices_path`, refusing a file made for another pool or config.

    Args:
        settings: the bonafide settings; `indices_path` must be set.
        labels: labels of the pool the positions index.
        expected: this run's metadata (`RobustDataModule.bonafide_metadata()`), compared with the file's.
    """
    path = settings.indices_path
    assert path, "read_parts needs data.bonafide.indices_path"
    (train, holdout), meta = read_bonafide_parts(path)
    _check_metadata(settings, meta, expected)
    everything = train if holdout is None else np.concatenate([train, holdout])
    if len(everything) and everything.max() >= len(labels):
        raise ConfigError(
            f"data.bonafide.indices_path {path} has index {int(everything.max())}, beyond the pool of "
            f"{len(labels)} images; use the indices of a run on this data set"
        )
    return split_holdout(settings, labels, train) if holdout is None else (train, holdout)  # None: an older file


def _check_metadata(settings: BonafideSettings, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse an indices file whose metadata disagrees with this config (a different pool, split or holdout)."""
    path = settings.indices_path
    for key in MATCHING_METADATA:
        if key in meta and meta[key] != expected[key]:
            raise ConfigError(
                f"data.bonafide.indices_path {path} was written for {key}={meta[key]!r}, this config has "
                f"{expected[key]!r}; use the indices of a run with the same data settings"
            )
    held_out = settings.holdout_size
    if "holdout_size" in meta and held_out and meta["holdout_size"] != held_out:
        raise ConfigError(
            f"data.bonafide.indices_path {path} holds out {meta['holdout_size']} images but "
            f"data.bonafide.holdout_size is {held_out}; set data.bonafide.holdout_size {meta['holdout_size']} "
            "(or 0 to take the file's split)"
        )


def stratified_draw(setting: str, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded, stratified draw of `size` images whose size error names the `setting` that asked for it."""
    try:
        return bonafide_indices(labels, size, seed=seed)
    except ConfigError as error:
        raise ConfigError(f"{setting} {size}: {str(error).replace(f'bonafide size {size} ', '')}") from None


def check_disjoint_roles(roles: Roles) -> None:
    """Every image plays one role (bonafide train, holdout, evaluation, injection sets): refuse any overlap.

    Raises:
        ConfigError: naming the two sets and how many images they share.
    """
    names = list(roles)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            (split_a, index_a), (split_b, index_b) = roles[first], roles[second]
            shared = np.intersect1d(index_a, index_b).size if split_a == split_b else 0
            if shared:
                raise ConfigError(
                    f"the {first} and the {second} share {shared} images of the {split_a} split; every image may "
                    "play one role only (draw them from disjoint parts, e.g. data.bonafide.pool: test_half)"
                )
