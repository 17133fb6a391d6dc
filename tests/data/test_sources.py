"""Readers of the real on-disk formats, on tiny files written by the fixtures."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mcrobust.data.sources import (
    channel_statistics,
    load_cifar10,
    load_digits,
    load_image_folder,
    load_split,
    load_svhn,
)
from mcrobust.errors import ConfigError, DataError


def test_cifar10_reads_all_five_train_batches_in_hwc_order(cifar10_root):
    train = load_cifar10(cifar10_root, "train")
    test = load_cifar10(cifar10_root, "test")
    assert train.images.shape == (100, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (30, 32, 32, 3)
    assert train.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # the raw row is R plane, G plane, B plane: pixel (0, 0) of channel c is data[c * 1024]
    with (cifar10_root / "cifar-10-batches-py" / "test_batch").open("rb") as handle:
        raw = pickle.load(handle, encoding="latin1")["data"]
    assert [test.images[0, 0, 0, c] for c in range(3)] == [raw[0][c * 1024] for c in range(3)]


def test_cifar10_missing_files_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*data_batch_1"):
        load_cifar10(tmp_path, "train")


def test_cifar10_refuses_a_pickle_that_would_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()


def test_svhn_maps_label_10_to_digit_0(svhn_root):
    train = load_svhn(svhn_root, "train")
    assert train.images.shape == (60, 32, 32, 3)
    assert train.labels[:3].tolist() == [0, 1, 2] and train.labels.max() == 9


def test_svhn_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="train_32x32.mat"):
        load_svhn(tmp_path, "train")


def test_digits_are_32x32x3_uint8_with_a_seeded_stratified_split():
    train, test = load_digits("train"), load_digits("test")
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    assert len(train.labels) + len(test.labels) == 1797
    assert train.images.max() == 255
    again = load_digits("test")
    np.testing.assert_array_equal(test.labels, again.labels)
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 30  # every class present in the test split
    assert not np.array_equal(load_digits("test", seed=1).labels, test.labels)


def test_image_folder_reads_classes_from_folder_names(tmp_path):
    from PIL import Image

    for label, name in enumerate(("cat", "dog")):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * label + i, np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    split = load_image_folder(tmp_path, "train")
    assert split.classes == ("cat", "dog")
    assert split.images.shape == (6, 8, 8, 3) and split.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert load_image_folder(tmp_path, "train", image_size=16).images.shape == (6, 16, 16, 3)
    with pytest.raises(DataError, match="expected"):
        load_image_folder(tmp_path, "test")


def test_unknown_dataset_or_split_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_split("mnist", "train")
    with pytest.raises(ConfigError, match="unknown split"):
        load_split("digits", "val")


def test_channel_statistics_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_statistics(images)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0) / 255, rtol=1e-6)
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(0) / 255, rtol=1e-6)


def _image_folder(root, classes=("cat", "dog"), per_class=3):
    from PIL import Image

    for split in ("train", "test"):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((8, 8, 3), 40 * label + i, np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_image_folder_skips_unreadable_files_only_when_asked(tmp_path):
    root = _image_folder(tmp_path)
    (root / "train" / "cat" / "1.png").write_bytes(b"")
    (root / "train" / "dog" / "0.png").write_bytes(b"GIF89a, then nothing")
    with pytest.raises(DataError, match=r"cannot read .*cat/1\.png as an image \(the file is empty\)"):
        load_image_folder(root, "train")
    with pytest.warns(UserWarning, match=r"left out 2 unreadable file\(s\)"):
        split = load_split("image_folder", "train", root, skip_unreadable=True)
    assert split.labels.tolist() == [0, 0, 1, 1]
    assert split.images[:, 0, 0, 0].tolist() == [0, 2, 41, 42]  # the pixel value encodes class and index


def test_image_folder_refuses_a_class_that_skipping_emptied(tmp_path):
    root = _image_folder(tmp_path, per_class=1)
    (root / "test" / "dog" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="no readable image left in class folder\\(s\\) dog"):
        load_image_folder(root, "test", skip_unreadable=True)


def test_image_folder_splits_must_have_the_same_class_folders(tmp_path):
    root = _image_folder(tmp_path, classes=("1", "2", "3"), per_class=1)
    (root / "test" / "3").rename(root / "test" / "three")
    with pytest.raises(DataError, match=r"only in test/: three; only in train/: 3\)"):
        load_image_folder(root, "test")
