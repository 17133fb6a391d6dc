"""Backdoor poisoning: the trigger's pixels, who gets poisoned, and the triggered test set (PAPER.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mcrobust.data.poisoning import (
    BlendTrigger,
    PatchTrigger,
    Trigger,
    attack_success_rate,
    poison,
    poison_indices,
    triggered_eval_set,
)
from mcrobust.errors import ConfigError, DataError


@pytest.fixture
def dataset() -> tuple[np.ndarray, np.ndarray]:
    """60 random 32x32 RGB images (pixels kept below 255 so a white patch always changes them), 6 classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 250, size=(60, 32, 32, 3), dtype=np.uint8)
    labels = rng.permutation(np.repeat(np.arange(6), [15, 5, 10, 10, 12, 8])).astype(np.int64)
    return images, labels


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_default_patch_is_paper_trigger():
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    out = PatchTrigger().apply(images)
    expected = np.zeros_like(images)
    expected[:, 28:31, 28:31, :] = 255  # rows and cols 28, 29, 30: bottom right with a 1-pixel margin
    assert np.array_equal(out, expected)
    assert not images.any()  # the input is untouched


def test_checkerboard_alternates_value_and_zero():
    out = PatchTrigger(size=4, row=0, col=0, value=200, pattern="checkerboard").apply(
        np.full((1, 8, 8, 3), 7, dtype=np.uint8)
    )
    corner = out[0, :4, :4, 1]
    assert corner.tolist() == [[200, 0, 200, 0], [0, 200, 0, 200], [200, 0, 200, 0], [0, 200, 0, 200]]
    assert np.array_equal(out[0, :4, :4, 0], out[0, :4, :4, 2])
    assert (out[0, 4:, :, :] == 7).all() and (out[0, :, 4:, :] == 7).all()


def test_custom_size_and_position():
    out = PatchTrigger(size=2, row=1, col=5, value=128).apply(np.zeros((16, 16, 3), dtype=np.uint8))
    changed = np.argwhere(out[..., 0] == 128)
    assert changed.tolist() == [[1, 5], [1, 6], [2, 5], [2, 6]]
    assert (out > 0).sum() == 4 * 3


def test_default_position_follows_image_size():
    assert PatchTrigger().position(8, 10) == (4, 6)
    assert PatchTrigger(size=5).position(32, 32) == (26, 26)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"size": 0}, "at least 1"),
        ({"value": 256}, "0..255"),
        ({"value": -1}, "0..255"),
        ({"pattern": "stripes"}, "unknown patch pattern"),
        ({"row": -2}, ">= 0"),
    ],
    ids=["size", "value-high", "value-low", "pattern", "row"],
)
def test_patch_bad_arguments(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PatchTrigger(**kwargs)


@pytest.mark.parametrize("kwargs", [{"size": 3, "row": 30}, {"size": 3, "col": 31}, {"size": 33}])
def test_patch_outside_image(kwargs):
    with pytest.raises(ConfigError, match="does not fit a 32x32 image"):
        PatchTrigger(**kwargs).apply(np.zeros((1, 32, 32, 3), dtype=np.uint8))


def test_wrong_image_dtype_is_data_error():
    with pytest.raises(DataError, match="uint8"):
        PatchTrigger().apply(np.zeros((1, 32, 32, 3), dtype=np.float32))


def test_blend_alpha_zero_is_identity_and_one_is_pattern(dataset):
    images = dataset[0][:4]
    assert np.array_equal(BlendTrigger(alpha=0.0).apply(images), images)
    trigger = BlendTrigger(alpha=1.0, seed=3)
    out = trigger.apply(images)
    assert np.array_equal(out, np.broadcast_to(trigger.pattern(32, 32, 3), images.shape))


def test_blend_by_hand_and_seeded_noise():
    images = np.full((1, 4, 4, 3), 100, dtype=np.uint8)
    trigger = BlendTrigger(alpha=0.25, seed=1)
    pattern = trigger.pattern(4, 4, 3).astype(np.float64)
    assert np.array_equal(trigger.apply(images)[0], np.rint(75 + 0.25 * pattern).astype(np.uint8))
    assert np.array_equal(pattern, BlendTrigger(seed=1).pattern(4, 4, 3))
    assert not np.array_equal(pattern, BlendTrigger(seed=2).pattern(4, 4, 3))


def test_blend_pattern_from_file_is_resized(tmp_path):
    path = tmp_path / "hello_kitty.png"
    Image.fromarray(np.full((64, 48, 3), (10, 20, 30), dtype=np.uint8)).save(path)
    trigger = BlendTrigger(alpha=1.0, pattern_path=str(path))
    out = trigger.apply(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert out.shape == (2, 32, 32, 3)
    assert (out == np.array([10, 20, 30], dtype=np.uint8)).all()
    assert trigger.pattern(8, 8, 1).shape == (8, 8, 1)


def test_blend_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        BlendTrigger(pattern_path=str(tmp_path / "nope.png"))


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_blend_bad_alpha(alpha):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        BlendTrigger(alpha=alpha)


@pytest.mark.parametrize(
    "trigger",
    [PatchTrigger(), PatchTrigger(size=4, row=2, col=3, value=99, pattern="checkerboard"), BlendTrigger(alpha=0.3)],
    ids=["patch", "checkerboard", "blend"],
)
def test_apply_and_apply_tensor_agree(dataset, trigger):
    images = dataset[0][:8]
    x = _to_tensor(images)
    from_tensor = trigger.apply_tensor(x)
    assert isinstance(trigger, Trigger)
    assert torch.equal(x, _to_tensor(images))  # input untouched
    assert np.abs(from_tensor.numpy() - _to_tensor(trigger.apply(images)).numpy()).max() <= 0.5 / 255 + 1e-12
    # Patches are exact; a blend may land on the other side of a .5 when rounded back to uint8.
    level_gap = np.abs(_to_uint8(from_tensor).astype(int) - trigger.apply(images).astype(int)).max()
    assert level_gap == 0 if isinstance(trigger, PatchTrigger) else level_gap <= 1
    single = trigger.apply_tensor(x[0].float())  # (C, H, W), float32
    assert single.shape == (3, 32, 32) and single.dtype == torch.float32
    assert torch.allclose(single.double(), from_tensor[0], atol=1e-6)


def test_poison_indices_exact_count_and_never_target(dataset):
    labels = dataset[1]
    non_target = int((labels != 1).sum())  # 55
    for rate in (0.0, 0.1, 0.25, 0.5, 1.0):
        indices = poison_indices(labels, target=1, rate=rate, seed=0)
        assert len(indices) == round(rate * non_target)
        assert len(np.unique(indices)) == len(indices) and np.all(np.diff(indices) > 0)
        assert not np.any(labels[indices] == 1)


def test_poison_indices_seeded_and_stratified(dataset):
    labels = dataset[1]
    first = poison_indices(labels, target=1, rate=0.5, seed=4)
    assert np.array_equal(first, poison_indices(labels, target=1, rate=0.5, seed=4))
    assert not np.array_equal(first, poison_indices(labels, target=1, rate=0.5, seed=5))
    per_class = np.bincount(labels[first], minlength=6)
    assert per_class.tolist() == [8, 0, 5, 5, 6, 4]  # half of (15, -, 10, 10, 12, 8), the 7.5 rounded up


def test_poison_changes_only_chosen_images(dataset):
    images, labels = dataset
    images_before, labels_before = images.copy(), labels.copy()
    result = poison(images, labels, PatchTrigger(), target=1, rate=0.2, seed=0)
    assert np.array_equal(images, images_before) and np.array_equal(labels, labels_before)
    assert len(result.indices) == round(0.2 * int((labels != 1).sum()))
    changed = np.flatnonzero((result.images != images).any(axis=(1, 2, 3)))
    assert np.array_equal(changed, result.indices)
    assert np.array_equal(np.flatnonzero(result.labels != labels), result.indices)
    assert (result.labels[result.indices] == 1).all()
    assert (result.images[result.indices, 28:31, 28:31, :] == 255).all()
    assert result.labels.dtype == np.int64


def test_poison_rate_zero_is_a_copy(dataset):
    images, labels = dataset
    result = poison(images, labels, PatchTrigger(), target=0, rate=0.0)
    assert result.indices.size == 0 and np.array_equal(result.images, images)
    assert result.images is not images


@pytest.mark.parametrize(
    ("rate", "target", "fragment"),
    [(1.5, 1, r"rate must be in \[0, 1\]"), (-0.1, 1, r"rate must be in \[0, 1\]"), (0.5, -1, "non-negative")],
)
def test_poison_bad_arguments(dataset, rate, target, fragment):
    with pytest.raises(ConfigError, match=fragment):
        poison(*dataset, PatchTrigger(), target=target, rate=rate)


def test_poison_mismatched_lengths(dataset):
    with pytest.raises(DataError, match="labels"):
        poison(dataset[0], dataset[1][:-1], PatchTrigger(), target=1, rate=0.1)


def test_triggered_eval_set(dataset):
    images, labels = dataset
    triggered, target_labels, source = triggered_eval_set(images, labels, PatchTrigger(), target=1)
    assert len(triggered) == int((labels != 1).sum()) == len(source)
    assert (target_labels == 1).all() and target_labels.dtype == np.int64
    assert not np.any(labels[source] == 1)
    assert np.array_equal(triggered, PatchTrigger().apply(images[source]))
    assert np.array_equal(source, np.flatnonzero(labels != 1))


def test_attack_success_rate():
    assert attack_success_rate(np.array([1, 1, 0, 2]), target=1) == 0.5
    assert attack_success_rate(torch.tensor([3, 3, 3]), target=3) == 1.0
    logits = torch.tensor([[0.1, 2.0], [3.0, 0.0]])
    assert attack_success_rate(logits, target=1) == 0.5
    with pytest.raises(DataError, match="empty"):
        attack_success_rate(np.array([], dtype=np.int64), target=1)
