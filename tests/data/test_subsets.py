"""The bonafide settings and parts (`mcrobust.data.subsets`): validation, the holdout split, reading a saved file."""

from __future__ import annotations

import numpy as np
import pytest

from mcrobust.data.bonafide import save_indices
from mcrobust.data.subsets import BonafideSettings, draw_parts, read_parts, split_holdout, stratified_draw
from mcrobust.errors import ConfigError

LABELS = np.repeat(np.arange(10), 30)  # a balanced pool of 300 images, 30 per class


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, r"^data.bonafide.size must be >= 1, got 0$"),
        ({"fraction": 1.5}, r"^data.bonafide.fraction must be in \(0, 1\], got 1.5$"),
        ({"fraction": 0.0}, r"^data.bonafide.fraction must be in \(0, 1\], got 0.0$"),
        ({"size": 10, "fraction": 0.1}, r"^set data.bonafide.size or data.bonafide.fraction, not both$"),
        ({"holdout_size": -1}, r"^data.bonafide.holdout_size must be >= 0, got -1$"),
        ({"pool": "everywhere"}, r"^data.bonafide.pool must be 'train' or 'test_half', got 'everywhere'$"),
    ],
    ids=["size-0", "fraction-above-1", "fraction-0", "size-and-fraction", "negative-holdout", "unknown-pool"],
)
def test_impossible_settings_are_one_line_errors_naming_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BonafideSettings(**kwargs)


def test_only_a_size_a_fraction_or_a_file_picks_images():
    assert not BonafideSettings().picks_images and not BonafideSettings(pool="test_half", seed=3).picks_images
    assert BonafideSettings(size=5).picks_images and BonafideSettings(fraction=0.5).picks_images
    assert BonafideSettings(indices_path="run/bonafide_indices.json").picks_images


def test_holdout_is_an_exact_stratified_part_of_the_chosen_images():
    chosen = np.arange(0, 300, 3)  # 100 images: 10 of each class
    train, held = split_holdout(BonafideSettings(holdout_size=20, seed=1), LABELS, chosen)
    assert len(train) == 80 and len(held) == 20
    assert sorted(np.concatenate([train, held]).tolist()) == chosen.tolist()  # a split of the chosen, no image twice
    np.testing.assert_array_equal(np.bincount(LABELS[held], minlength=10), np.full(10, 2))  # 20 of 10 balanced
    again = split_holdout(BonafideSettings(holdout_size=20, seed=1), LABELS, chosen)
    np.testing.assert_array_equal(again[1], held)
    other = split_holdout(BonafideSettings(holdout_size=20, seed=2), LABELS, chosen)
    assert not np.array_equal(other[1], held)


def test_no_holdout_keeps_every_chosen_image_for_training():
    chosen = np.array([4, 8, 15, 16, 23, 42])
    train, held = split_holdout(BonafideSettings(), LABELS, chosen)
    np.testing.assert_array_equal(train, chosen)
    assert held.size == 0 and held.dtype == chosen.dtype


def test_a_fraction_draws_its_share_of_the_pool_and_nothing_draws_none():
    train, held = draw_parts(BonafideSettings(fraction=0.1, holdout_size=10), LABELS, num_classes=10)
    assert len(train) + len(held) == 30 and len(held) == 10
    np.testing.assert_array_equal(np.bincount(LABELS[np.concatenate([train, held])], minlength=10), np.full(10, 3))
    assert draw_parts(BonafideSettings(pool="test_half"), LABELS, num_classes=10) is None


def test_a_holdout_that_leaves_a_class_without_training_images_names_both_settings():
    chosen = np.arange(0, 300, 15)  # 20 images, 2 per class: 9 left to train on cannot give each of 10 classes one
    with pytest.raises(ConfigError, match="data.bonafide.holdout_size 11 leaves 9 of the 20 .* data.bonafide.size"):
        split_holdout(BonafideSettings(holdout_size=11), LABELS, chosen)
    with pytest.raises(ConfigError, match="data.bonafide.holdout_size 20 leaves none of the 20"):
        split_holdout(BonafideSettings(holdout_size=20), LABELS, chosen)


def test_a_saved_file_with_another_holdout_is_refused(tmp_path):
    path = tmp_path / "bonafide_indices.json"
    meta = {"dataset": "digits", "pool": "train", "pool_size": 300, "split_seed": 0, "holdout_size": 2}
    save_indices(path, np.arange(6), {**meta, "train": [0, 1, 2, 3], "holdout": [4, 5]})
    expected = {"dataset": "digits", "pool": "train", "pool_size": 300, "split_seed": 0}
    parts = read_parts(BonafideSettings(indices_path=str(path)), LABELS, expected)
    assert [part.tolist() for part in parts] == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(ConfigError, match="holds out 2 images but data.bonafide.holdout_size is 3"):
        read_parts(BonafideSettings(indices_path=str(path), holdout_size=3), LABELS, expected)
    with pytest.raises(ConfigError, match="data.bonafide.indices_path .* written for split_seed=0, this config has 1"):
        read_parts(BonafideSettings(indices_path=str(path)), LABELS, {**expected, "split_seed": 1})


def test_a_stratified_draw_names_the_setting_that_asked_for_it():
    with pytest.raises(ConfigError, match=r"^data.eval_size 5: leaves class \d without an image"):
        stratified_draw("data.eval_size", LABELS, 5, seed=0)
    assert len(stratified_draw("data.eval_size", LABELS, 50, seed=0)) == 50
