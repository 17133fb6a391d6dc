"""RobustDataModule: splits, bonafide subsets, poisoning, evaluation sets and sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mcrobust.data.datamodules import BonafideSettings, PoisonSettings, RobustDataModule
from mcrobust.data.samplers import UnpaddedShardSampler
from mcrobust.errors import ConfigError
from mcrobust.threats.triggers import PatchTrigger


def make(**kwargs) -> RobustDataModule:
    """A set-up data module; `bonafide` may be a dict of BonafideSettings, as in a YAML config."""
    if isinstance(kwargs.get("bonafide"), dict):
        kwargs["bonafide"] = BonafideSettings(**kwargs["bonafide"])
    datamodule = RobustDataModule(**kwargs)
    datamodule.setup("fit")
    return datamodule


def test_digits_loaders_give_pixels_in_unit_range_with_indices():
    datamodule = make(batch_size=16)
    x, y, index = next(iter(datamodule.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and y.dtype == torch.long and index.dtype == torch.long
    assert datamodule.num_classes == 10 and len(datamodule.mean) == 3
    assert datamodule.eval_set_names() == ["clean"]


def test_cifar10_and_svhn_go_through_the_real_readers(cifar10_root, svhn_root):
    cifar = make(dataset="cifar10", root=str(cifar10_root), batch_size=8)
    assert cifar.augment and len(cifar.train_dataset()) == 100 and len(cifar.eval_datasets()["clean"]) == 30
    svhn = make(dataset="svhn", root=str(svhn_root), batch_size=8)
    assert not svhn.augment and len(svhn.train_dataset()) == 60


def test_bonafide_subset_is_stratified_exact_and_trains_the_bonafide_system():
    datamodule = make(train_on="bonafide", bonafide={"size": 140, "seed": 3})
    train = datamodule.train_dataset()
    assert len(train) == 140
    counts = np.bincount(train.labels.numpy(), minlength=10)
    assert counts.min() >= 13 and counts.max() <= 15
    again = make(train_on="bonafide", bonafide={"size": 140, "seed": 3})
    np.testing.assert_array_equal(datamodule.bonafide_index, again.bonafide_index)


def test_test_half_pool_is_disjoint_from_the_evaluation_set():
    datamodule = make(bonafide={"pool": "test_half", "size": 50}, train_on="bonafide")
    pool_images = datamodule.pool.images.reshape(len(datamodule.pool.images), -1)
    eval_images = datamodule.eval_split.images.reshape(len(datamodule.eval_split.images), -1)
    assert len(pool_images) + len(eval_images) == 360
    pool_rows = {row.tobytes() for row in pool_images[datamodule.bonafide_index]}
    assert not pool_rows & {row.tobytes() for row in eval_images}


def test_holdout_is_carved_from_the_bonafide_subset():
    datamodule = make(train_on="bonafide", bonafide={"size": 100, "holdout_size": 20})
    train, held = datamodule.bonafide_dataset("train"), datamodule.bonafide_dataset("holdout")
    assert len(train) == 80 and len(held) == 20
    assert not set(train.indices.tolist()) & set(held.indices.tolist())
    assert len(datamodule.train_dataset()) == 80


def test_bonafide_indices_round_trip_through_the_checkpoint_state():
    datamodule = make(bonafide={"size": 30})
    other = RobustDataModule(bonafide=BonafideSettings(size=30, seed=99))
    other.load_state_dict(datamodule.state_dict())
    other.setup("fit")
    np.testing.assert_array_equal(other.bonafide_index, datamodule.bonafide_index)


def test_bonafide_indices_file_is_read(tmp_path):
    path = tmp_path / "indices.json"
    path.write_text(json.dumps({"indices": [0, 5, 9]}))
    datamodule = make(train_on="bonafide", bonafide={"indices_path": str(path)})
    assert datamodule.train_dataset().indices.tolist() == [0, 5, 9]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bonafide": {"size": 5000}}, "larger|pool"),
        ({"train_on": "bonafide"}, "bonafide.size"),
        ({"batch_size": 0}, "batch_size"),
        ({"bonafide": {"size": 10, "fraction": 0.1}}, "not both"),
    ],
    ids=["too-large", "missing-size", "batch-0", "both-sizes"],
)
def test_impossible_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make(**kwargs)


def test_poisoning_changes_only_the_training_split_and_adds_a_triggered_set():
    settings = PoisonSettings(trigger=PatchTrigger(), target=1, rate=0.5, seed=0)
    datamodule = make(poison=settings)
    clean_train = make().train_dataset()
    poisoned = datamodule.train_dataset()
    relabelled = poisoned.labels != clean_train.labels
    changed = (poisoned.images != clean_train.images).flatten(1).any(1)
    non_target = int((clean_train.labels != 1).sum())
    assert int(relabelled.sum()) == round(0.5 * non_target)
    assert bool((poisoned.labels[relabelled] == 1).all())
    assert not bool((changed & ~relabelled).any())  # no image outside the poisoned ones changes
    sets = datamodule.eval_datasets()
    assert datamodule.eval_set_names() == ["clean", "triggered"]
    torch.testing.assert_close(sets["clean"].images, make().eval_datasets()["clean"].images)
    triggered = sets["triggered"]
    assert bool((triggered.labels == 1).all())
    assert len(triggered) == int((sets["clean"].labels != 1).sum())
    assert bool((triggered.images[:, :, 28:31, 28:31] == 255).all())


def test_trigger_after_augmentation_is_stamped_on_the_fly():
    settings = PoisonSettings(rate=1.0, after_augmentation=True)
    dataset = make(poison=settings).train_dataset()
    stamped = [dataset[i] for i in range(len(dataset)) if dataset.labels[i] == 1 and dataset.late[i]]
    assert stamped and all(bool((x[:, 28:31, 28:31] == 1.0).all()) for x, _, _ in stamped)


def test_unpadded_shards_cover_every_item_once():
    items = list(range(11))
    shards = [list(UnpaddedShardSampler(items, 3, rank)) for rank in range(3)]
    assert sorted(sum(shards, [])) == items
    assert [len(s) for s in shards] == [4, 4, 3]
