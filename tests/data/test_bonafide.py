"""Bonafide indices: deterministic, stratified, exact in size, disjoint from evaluation, saved and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcrobust.data.bonafide import (
    allocate_proportional,
    bonafide_indices,
    fraction_to_size,
    load_indices,
    save_indices,
    split_stratified,
)
from mcrobust.errors import ConfigError, DataError


@pytest.fixture
def uneven_labels() -> np.ndarray:
    """A shuffled pool of 1000 labels with unequal class sizes (10 classes, 40..160 images each)."""
    counts = [160, 40, 100, 120, 80, 60, 140, 100, 110, 90]
    labels = np.repeat(np.arange(10), counts)
    return np.random.default_rng(7).permutation(labels)


def test_same_seed_same_indices_other_seed_other_indices(uneven_labels):
    first = bonafide_indices(uneven_labels, 250, seed=3)
    assert np.array_equal(first, bonafide_indices(uneven_labels, 250, seed=3))
    assert not np.array_equal(first, bonafide_indices(uneven_labels, 250, seed=4))


@pytest.mark.parametrize("size", [12, 33, 50, 97, 250, 501, 999, 1000])
def test_exact_size_sorted_unique_in_range(uneven_labels, size):
    indices = bonafide_indices(uneven_labels, size, seed=1)
    assert indices.dtype == np.int64
    assert len(indices) == size
    assert np.all(np.diff(indices) > 0)
    assert indices.min() >= 0 and indices.max() < len(uneven_labels)


@pytest.mark.parametrize("size", [12, 33, 97, 501])
def test_per_class_counts_within_one_of_proportional(uneven_labels, size):
    indices = bonafide_indices(uneven_labels, size, seed=2)
    got = np.bincount(uneven_labels[indices], minlength=10)
    expected = size * np.bincount(uneven_labels) / len(uneven_labels)
    assert np.all(np.abs(got - expected) < 1)


def test_largest_remainder_by_hand():
    # quotas 7 * (5, 3, 2) / 10 = (3.5, 2.1, 1.4): floors (3, 2, 1) and the one left goes to the 0.5 remainder.
    assert allocate_proportional(np.array([5, 3, 2]), 7).tolist() == [4, 2, 1]
    # equal remainders (1.5, 1.5): the tie goes to the lower class id.
    assert allocate_proportional(np.array([1, 1]), 1).tolist() == [1, 0]
    assert allocate_proportional(np.array([3, 3]), 3).tolist() == [2, 1]


def test_size_of_whole_pool_takes_everything(uneven_labels):
    assert np.array_equal(bonafide_indices(uneven_labels, 1000), np.arange(1000))


def test_too_large_names_both_numbers(uneven_labels):
    with pytest.raises(ConfigError, match="1001") as info:
        bonafide_indices(uneven_labels, 1001)
    assert "1000" in str(info.value)


@pytest.mark.parametrize("size", [0, -5])
def test_zero_size_refused(uneven_labels, size):
    with pytest.raises(ConfigError, match="at least 1"):
        bonafide_indices(uneven_labels, size)


def test_class_without_image_names_class_and_smallest_size():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    with pytest.raises(ConfigError, match="class 2") as info:
        bonafide_indices(labels, 20)
    message = str(info.value)
    assert "at least 64" in message and "\n" not in message
    # 63 = 56.7 + 5.67 + 0.63: floors 56 + 5 + 0 leave two images for the remainders 0.7 and 0.67, not 0.63.
    with pytest.raises(ConfigError, match="class 2"):
        bonafide_indices(labels, 63)
    for size in range(64, 101):  # from the size the message names on, every size works
        assert np.bincount(labels[bonafide_indices(labels, size)], minlength=3).min() >= 1


def test_class_absent_from_pool_refused():
    labels = np.array([0, 0, 1, 1, 3, 3])
    with pytest.raises(ConfigError, match="class 2 has no image"):
        bonafide_indices(labels, 4, num_classes=4)
    assert len(bonafide_indices(labels, 3)) == 3  # without num_classes only present classes count


def test_label_outside_num_classes_refused():
    with pytest.raises(DataError, match="label 5"):
        bonafide_indices(np.array([0, 1, 5]), 3, num_classes=3)


def test_float_labels_refused():
    with pytest.raises(DataError, match="integer"):
        bonafide_indices(np.array([0.0, 1.0]), 1)


def test_split_halves_are_disjoint_cover_and_stratified(uneven_labels):
    first, second = split_stratified(uneven_labels, 0.5, seed=0)
    assert len(first) == 500 and len(second) == 500
    assert np.intersect1d(first, second).size == 0
    assert np.array_equal(np.union1d(first, second), np.arange(1000))
    assert np.array_equal(np.bincount(uneven_labels[first]), np.bincount(uneven_labels) // 2)


def test_split_by_size_and_seed(uneven_labels):
    first, second = split_stratified(uneven_labels, 123, seed=5)
    assert len(first) == 123 and len(second) == 877
    assert np.array_equal(first, bonafide_indices(uneven_labels, 123, seed=5))
    assert not np.array_equal(first, split_stratified(uneven_labels, 123, seed=6)[0])


@pytest.mark.parametrize(("fraction", "pool", "size"), [(0.5, 10, 5), (0.25, 10, 2), (0.001, 10, 1), (1.0, 7, 7)])
def test_fraction_to_size(fraction, pool, size):
    assert fraction_to_size(fraction, pool) == size


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        fraction_to_size(fraction, 100)


def test_save_load_round_trip(tmp_path, uneven_labels):
    indices = bonafide_indices(uneven_labels, 50, seed=9)
    path = tmp_path / "run" / "bonafide.json"
    save_indices(path, indices, {"seed": 9, "size": 50, "source": "cifar10/test"})
    loaded, meta = load_indices(path)
    assert loaded.dtype == np.int64 and np.array_equal(loaded, indices)
    assert meta == {"seed": 9, "size": 50, "source": "cifar10/test"}
    assert [p.name for p in path.parent.iterdir()] == ["bonafide.json"]  # no temporary file left behind


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "bonafide.json"
    save_indices(path, np.array([1, 2]), {"seed": 0})
    save_indices(path, np.array([3]), {"seed": 1})
    assert load_indices(path)[0].tolist() == [3]


def test_save_accepts_numpy_metadata(tmp_path):
    path = tmp_path / "b.json"
    save_indices(path, np.array([1]), {"seed": np.int64(3), "fraction": np.float32(0.5), "root": tmp_path})
    assert load_indices(path)[1] == {"seed": 3, "fraction": 0.5, "root": str(tmp_path)}


def test_size_must_be_whole_number(uneven_labels):
    with pytest.raises(ConfigError, match="whole number"):
        bonafide_indices(uneven_labels, 50.0)  # type: ignore[arg-type]


def test_save_refuses_reserved_key(tmp_path):
    with pytest.raises(ConfigError, match="indices"):
        save_indices(tmp_path / "x.json", np.array([1]), {"indices": [2]})


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2, 3]", '{"seed": 1}', '{"indices": [1, -2]}', '{"indices": [1.5]}', '{"indices": "12"}'],
    ids=["broken", "list", "no-indices", "negative", "float", "string"],
)
def test_malformed_file_is_data_error(tmp_path, content):
    path = tmp_path / "bonafide.json"
    path.write_text(content)
    with pytest.raises(DataError, match="bonafide.json"):
        load_indices(path)


def test_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_indices(tmp_path / "missing.json")


def test_file_is_plain_json(tmp_path):
    path = tmp_path / "b.json"
    save_indices(path, np.array([4, 8], dtype=np.int64), {"seed": 3})
    assert json.loads(path.read_text()) == {"indices": [4, 8], "seed": 3}
