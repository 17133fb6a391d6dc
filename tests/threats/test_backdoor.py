"""Backdoor poisoning: the trigger's pixels, who gets poisoned, and the triggered test set (PAPER.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mcrobust.errors import ConfigError, DataError
from mcrobust.threats.backdoor import attack_success_rate, poison, poison_indices, triggered_eval_set
from mcrobust.threats.triggers import BlendTrigger, MaskedTrigger, PatchTrigger, Trigger


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


# MaskedTrigger: triggers from the wild, as pattern + mask files or inline lists.

CROSS = [[0, 255, 0], [255, 255, 255], [0, 255, 0]]  # a fixed 3x3 black/white pattern


def _gray(value: int, size: int = 8, channels: int = 3) -> np.ndarray:
    return np.full((2, size, size, channels), value, dtype=np.uint8)


def _save_png(path, array) -> str:
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


def test_masked_solid_square_is_the_paper_patch(dataset):
    images = dataset[0][:4]
    trigger = MaskedTrigger(pattern=[[255] * 3] * 3)
    assert np.array_equal(trigger.apply(images), PatchTrigger().apply(images))
    x = _to_tensor(images)
    assert torch.equal(trigger.apply_tensor(x), PatchTrigger().apply_tensor(x))


@pytest.mark.parametrize("form", ["list", "png", "npy"])
def test_masked_fixed_black_and_white_pattern(tmp_path, form):
    source = {
        "list": lambda: CROSS,
        "png": lambda: _save_png(tmp_path / "cross.png", CROSS),
        "npy": lambda: (np.save(tmp_path / "cross.npy", np.array(CROSS, dtype=np.uint8)), str(tmp_path / "cross.npy"))[
            1
        ],
    }[form]()
    out = MaskedTrigger(pattern=source, row=1, col=2).apply(_gray(128))
    expected = _gray(128)
    expected[:, 1:4, 2:5, :] = np.array(CROSS, dtype=np.uint8)[:, :, None]
    assert np.array_equal(out, expected)
    assert np.array_equal(MaskedTrigger(pattern=source).apply(_gray(128))[0, 4:7, 4:7, 1], CROSS)  # bottom right


def test_masked_image_patch_under_a_mask(tmp_path):
    rng = np.random.default_rng(1)
    patch = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    shape = np.zeros((4, 5), dtype=np.uint8)
    shape[1:3, :] = 255
    shape[:, 2] = 255  # a plus sign
    trigger = MaskedTrigger(pattern=_save_png(tmp_path / "patch.png", patch), mask=_save_png(tmp_path / "m.png", shape))
    images = rng.integers(0, 256, size=(3, 10, 10, 3), dtype=np.uint8)
    out = trigger.apply(images)
    expected = images.copy()
    window = expected[:, 5:9, 4:9, :]  # a 4x5 pattern at the bottom right with a 1-pixel margin
    window[:, shape == 255] = patch[shape == 255]
    assert np.array_equal(out, expected)


def test_masked_soft_mask_and_png_transparency(tmp_path):
    rng = np.random.default_rng(2)
    patch = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    levels = np.array([[0, 51, 102], [153, 204, 255], [255, 0, 128]], dtype=np.uint8)
    images = rng.integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    m = levels[:, :, None] / 255.0
    expected = images.copy()
    expected[:, 2:5, 2:5, :] = np.rint(m * patch + (1 - m) * images[:, 2:5, 2:5, :]).astype(np.uint8)
    with_mask = MaskedTrigger(pattern=patch.tolist(), mask=(levels / 255.0).tolist())
    assert np.array_equal(with_mask.apply(images), expected)
    rgba = _save_png(tmp_path / "rgba.png", np.concatenate([patch, levels[:, :, None]], axis=2))
    assert np.array_equal(MaskedTrigger(pattern=rgba).apply(images), expected)  # the alpha channel is the mask


def test_masked_additive_perturbation_is_signed_and_clipped(tmp_path):
    delta = np.array([[-40, 0, 40], [20, -20, 0], [255, -255, 6]], dtype=np.int16)
    np.save(tmp_path / "delta.npy", delta)
    images = np.stack([_gray(10, 6)[0], _gray(250, 6)[0], _gray(128, 6)[0]])
    out = MaskedTrigger(pattern=str(tmp_path / "delta.npy"), mode="add", row=0, col=0).apply(images)
    expected = images.astype(np.int32)
    expected[:, :3, :3, :] += delta[:, :, None]
    assert np.array_equal(out, np.clip(expected, 0, 255).astype(np.uint8))
    even = np.array([[-40, 0, 40], [20, -20, 0], [254, -254, 6]], dtype=np.int16)
    half = MaskedTrigger(pattern=even.tolist(), mode="add", alpha=0.5, row=0, col=0).apply(images)
    expected = images.astype(np.int32)
    expected[:, :3, :3, :] += even[:, :, None] // 2  # alpha scales the perturbation
    assert np.array_equal(half, np.clip(expected, 0, 255).astype(np.uint8))


def test_masked_full_size_blend_equals_blend_trigger(tmp_path, dataset):
    images = dataset[0][:5]
    pattern = np.random.default_rng(3).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    path = _save_png(tmp_path / "kitty.png", pattern)
    out = MaskedTrigger(pattern=path, mode="blend", alpha=0.25).apply(images)
    assert np.array_equal(out, np.rint(0.75 * images + 0.25 * pattern).astype(np.uint8))
    assert np.array_equal(out, BlendTrigger(alpha=0.25, pattern_path=path).apply(images))
    assert MaskedTrigger(pattern=path).position(32, 32) == (0, 0)  # a full-size pattern covers the image


@pytest.mark.parametrize(
    ("kwargs", "exact"),
    [
        ({"pattern": CROSS}, True),
        ({"pattern": [[[200, 10, 30]] * 4] * 4, "mask": [[1, 0, 1, 0]] * 4, "row": 2, "col": 5}, True),
        ({"pattern": CROSS, "mask": [[0.2, 0.5, 0.9]] * 3}, False),
        ({"pattern": [[-60, 30], [90, -255]], "mode": "add", "alpha": 0.7}, False),
        ({"pattern": [[255, 0], [0, 255]], "mode": "blend", "alpha": 0.3, "mask": [[1, 0.5], [0.25, 1]]}, False),
    ],
    ids=["replace", "replace-rgb-mask", "soft-mask", "add", "blend"],
)
def test_masked_apply_and_apply_tensor_agree(dataset, kwargs, exact):
    trigger = MaskedTrigger(**kwargs)
    assert isinstance(trigger, Trigger)
    images = dataset[0][:6]
    x = _to_tensor(images)
    from_tensor = trigger.apply_tensor(x)
    assert torch.equal(x, _to_tensor(images))  # input untouched
    assert np.abs(from_tensor.numpy() - _to_tensor(trigger.apply(images)).numpy()).max() <= 0.5 / 255 + 1e-12
    level_gap = np.abs(_to_uint8(from_tensor).astype(int) - trigger.apply(images).astype(int)).max()
    assert level_gap == 0 if exact else level_gap <= 1
    assert (trigger.apply(images) != images).any()
    single = trigger.apply_tensor(x[0].float())
    assert single.shape == (3, 32, 32) and torch.allclose(single.double(), from_tensor[0], atol=1e-6)


def test_masked_trigger_poisons_like_any_trigger(dataset):
    images, labels = dataset
    result = poison(images, labels, MaskedTrigger(pattern=CROSS), target=1, rate=0.2, seed=0)
    assert np.array_equal(result.images[result.indices, 28:31, 28:31, 0], np.broadcast_to(CROSS, (11, 3, 3)))
    unchanged = np.setdiff1d(np.arange(len(images)), result.indices)
    assert np.array_equal(result.images[unchanged], images[unchanged])


def test_masked_missing_or_unreadable_files_name_the_file_and_setting(tmp_path):
    for kwargs, fragment in [
        ({"pattern": str(tmp_path / "absent.png")}, "trigger pattern file .*absent.png does not exist"),
        ({"pattern": CROSS, "mask": str(tmp_path / "nomask.npy")}, "trigger mask file .*nomask.npy does not exist"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as caught:
            MaskedTrigger(**kwargs)
        assert "\n" not in str(caught.value)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(ConfigError, match="cannot read trigger pattern file .*broken.png"):
        MaskedTrigger(pattern=str(tmp_path / "broken.png"))
    with pytest.raises(ConfigError, match="cannot read trigger mask file .*broken.npy"):
        MaskedTrigger(pattern=CROSS, mask=str(tmp_path / "broken.npy"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pattern": CROSS, "mode": "paste"}, "mode must be one of replace, add, blend"),
        ({"pattern": CROSS, "alpha": 0.5}, "1 for mode 'replace'"),
        ({"pattern": CROSS, "mode": "blend", "alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"pattern": [[-1, 0]]}, "values must be in 0..255"),
        ({"pattern": [[0.0, 0.5], [1.0, 0.2]], "mode": "add", "alpha": 1.0, "row": -1}, "row and col must be >= 0"),
        ({"pattern": [[300, 0]], "mode": "add"}, "values must be in -255..255"),
        ({"pattern": CROSS, "mask": [[0, 1, 2]] * 3}, r"mask's values must be in \[0, 1\]"),
        ({"pattern": CROSS, "mask": [[1, 1]] * 3}, "mask has shape"),
        ({"pattern": [[1, 2], [3]]}, "rectangular nested list"),
        ({"pattern": [1, 2, 3]}, "shape \\(h, w\\) or \\(h, w, C\\)"),
    ],
    ids=["mode", "replace-alpha", "alpha", "negative", "row", "add-range", "mask-range", "mask-shape", "ragged", "1d"],
)
def test_masked_bad_settings(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        MaskedTrigger(**kwargs)


def test_masked_pattern_must_fit_the_image_and_its_channels():
    with pytest.raises(ConfigError, match="3x3 trigger pattern at row 6, col 0 does not fit a 8x8 image"):
        MaskedTrigger(pattern=CROSS, row=6, col=0).apply(_gray(0))
    rgb = MaskedTrigger(pattern=[[[1, 2, 3]]])
    with pytest.raises(ConfigError, match="pattern has 3 channels, the images 1"):
        rgb.apply(_gray(0, channels=1))
    gray = MaskedTrigger(pattern=CROSS).apply(_gray(9, channels=1))  # (h, w) broadcasts to any channel count
    assert gray[0, 4:7, 4:7, 0].tolist() == CROSS


def _write_user_trigger(folder) -> None:
    (folder / "user_triggers.py").write_text(
        "import numpy as np\n"
        "class CornerDot:\n"
        "    def __init__(self, level: int = 7) -> None:\n"
        "        self.level = level\n"
        "    def apply(self, images):\n"
        "        out = np.array(images, copy=True)\n"
        "        out[..., 0, 0, :] = self.level\n"
        "        return out\n"
        "    def apply_tensor(self, x):\n"
        "        out = x.clone()\n"
        "        out[..., 0, 0] = self.level / 255\n"
        "        return out\n"
        "class OtherNames:\n"
        "    def apply(self, batch, *rest):\n"
        "        return batch\n"
        "    def apply_tensor(self, images: 'torch.Tensor') -> 'torch.Tensor':\n"
        "        return images\n"
        "class NotATrigger:\n"
        "    def __init__(self, level: int = 7) -> None:\n"
        "        self.level = level\n"
    )


def test_the_trigger_protocol_takes_any_class_path_through_jsonargparse(tmp_path, monkeypatch):
    """The config type of a trigger: jsonargparse checks the protocol and builds user and inline triggers."""
    from jsonargparse import ArgumentParser

    _write_user_trigger(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--trigger", type=Trigger)
    masked = '{"class_path": "mcrobust.threats.triggers.MaskedTrigger", "init_args": {"pattern": [[0, 255], [255, 0]]}}'
    built = parser.instantiate_classes(parser.parse_args([f"--trigger={masked}"])).trigger
    assert isinstance(built, MaskedTrigger) and built.pattern[:, :, 0].tolist() == [[0, 255], [255, 0]]
    config = parser.parse_args(["--trigger.class_path=user_triggers.CornerDot", "--trigger.init_args.level=9"])
    user = parser.instantiate_classes(config).trigger
    assert type(user).__name__ == "CornerDot" and user.apply(_gray(0))[0, 0, 0].tolist() == [9, 9, 9]
    other = parser.instantiate_classes(parser.parse_args(["--trigger.class_path=user_triggers.OtherNames"])).trigger
    assert type(other).__name__ == "OtherNames"  # any parameter names, with or without annotations
    with pytest.raises(Exception, match="does not implement protocol Trigger"):
        parser.parse_args(["--trigger.class_path=user_triggers.NotATrigger"])
