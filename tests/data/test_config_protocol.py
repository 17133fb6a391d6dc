"""The paper's protocol in every experiment config: one role per image, path and baselines on the same images.

Each config's data module is built on fabricated data in the real on-disk format of its data set (CIFAR-10
pickles, SVHN .mat, an ImageFolder of PNGs, the embedded digits), with the bonafide sizes scaled down to fit.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcrobust.cli import resolved_config
from mcrobust.data.bonafide import save_indices
from mcrobust.data.datamodules import BonafideSettings, RobustDataModule
from mcrobust.data.subsets import check_disjoint_roles
from mcrobust.errors import ConfigError, DataError
from mcrobust.threats.injection import InjectionSets
from tests.conftest import write_cifar10, write_svhn

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
DATA_KEYS = ("dataset", "bonafide.pool", "split_seed", "bonafide.size", "bonafide.seed", "bonafide.holdout_size")
DATA_KEYS += ("batch_size",)
SCALE = 25  # CIFAR/SVHN sizes 2500/250 become 100/10 on the fabricated sets


def write_image_folder(root: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class // 2), ("test", per_class)):
        for label in range(10):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("protocol")
    return {
        "cifar10": write_cifar10(base / "cifar10", per_batch=20, test=400),
        "svhn": write_svhn(base / "svhn", train=60, test=400),
        "image_folder": write_image_folder(base / "images"),
    }


@functools.cache
def resolved_data(config: Path) -> dict:
    """The config's data section as the CLI resolves it: its parts merged, every default filled in."""
    return resolved_config(config)["data"]


def data_settings(config: Path) -> dict:
    """The config's resolved data settings (a copy), without the trigger."""
    data = dict(resolved_data(config))
    data.pop("poison", None)  # the trigger does not change which image plays which role
    return data


def setting(data: dict, key: str) -> object:
    """A data setting by its dotted name below `data` ('bonafide.size'); None when it or its section is unset."""
    section, _, name = key.rpartition(".")
    return ((data.get(section) or {}) if section else data).get(name)


def build(config: Path, roots: dict[str, Path]) -> RobustDataModule:
    data = data_settings(config)
    bonafide = dict(data.pop("bonafide") or {})
    if data["dataset"] != "digits":
        data.update(root=str(roots[data["dataset"]]), download=False, num_workers=0)
        for key in ("size", "holdout_size"):
            if bonafide.get(key):
                bonafide[key] = max(1, bonafide[key] // SCALE)
    data.pop("image_size", None)
    datamodule = RobustDataModule(**data, bonafide=BonafideSettings(**bonafide) if bonafide else None)
    datamodule.setup("fit")
    return datamodule


def positions(datamodule: RobustDataModule) -> dict[str, set[tuple[str, int]]]:
    """Each role's images as (split, position), computed here from the parts, not from the module's own check."""
    split, origin = datamodule.pool_origin
    eval_split, eval_origin = datamodule.eval_origin
    roles = {"evaluation": {(eval_split, int(i)) for i in eval_origin}}
    if datamodule.bonafide_parts is not None:
        train, holdout = datamodule.bonafide_parts
        roles["train"] = {(split, int(i)) for i in origin[train]}
        roles["holdout"] = {(split, int(i)) for i in origin[holdout]}
    return roles


@pytest.mark.parametrize("config", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_image_plays_one_role(config, roots):
    datamodule = build(config, roots)
    roles = positions(datamodule)
    names = list(roles)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not roles[first] & roles[second], f"{config.stem}: {first} and {second} share images"
    if datamodule.bonafide.pool == "test_half":
        assert roles["evaluation"] and all(split == "test" for split, _ in roles["evaluation"])


def settings_groups() -> list[tuple[Path, list[Path]]]:
    """(repair config, the baseline configs of the same data set and net)."""
    groups = []
    for repair in EXPERIMENTS:
        if repair.stem.startswith("repair_") and "injection" not in repair.stem:
            suffix = repair.stem.removeprefix("repair_")
            baselines = [p for p in EXPERIMENTS if p.stem.startswith("baseline_") and p.stem.endswith(f"_{suffix}")]
            if baselines:
                groups.append((repair, baselines))
    return groups


@pytest.mark.parametrize("repair, baselines", settings_groups(), ids=[r.stem for r, _ in settings_groups()])
def test_path_and_baselines_train_on_the_same_images_with_the_same_budget(repair, baselines, roots):
    path_data, path_module = data_settings(repair), build(repair, roots)
    path_steps = len(path_module.train_dataloader())
    for baseline in baselines:
        data = data_settings(baseline)
        for key in DATA_KEYS:
            same = setting(data, key) == setting(path_data, key)
            assert same, f"{baseline.stem}: data.{key} differs from {repair.stem}"
        module = build(baseline, roots)
        np.testing.assert_array_equal(module.bonafide_parts[0], path_module.bonafide_parts[0])
        np.testing.assert_array_equal(module.train_dataset().indices.numpy(), path_module.bonafide_parts[0])
        if "noisy" not in baseline.stem:  # the noisy baseline trains nothing
            assert data.get("epoch_samples") == path_data.get("epoch_samples")
            assert len(module.train_dataloader()) == path_steps


@pytest.mark.parametrize("name", ["cifar10_vgg16", "cifar10_preresnet26", "svhn_preresnet26"])
def test_injection_sets_come_from_the_half_repair_evaluates_on(name, roots):
    injection = build(ROOT / f"configs/experiments/injection_{name}.yaml", roots)
    repair = build(ROOT / f"configs/experiments/repair_injection_{name}.yaml", roots)
    candidates = injection.eval_origin_of(np.arange(len(injection.eval_split.labels)))
    assert candidates[0] == "test"
    np.testing.assert_array_equal(candidates[1], repair.eval_origin[1])  # the repair's evaluation half exactly
    sets = InjectionSets(*(np.zeros(0) for _ in range(7)))  # only the origins matter for the check
    sets.source_split, sets.target_origin, sets.keep_origin = (
        candidates[0],
        *_as_tensors(candidates[1][:4], candidates[1][4:50]),
    )
    before = len(repair.eval_split.labels)
    repair.reserve_for_injection(sets.roles())  # bonafide data never overlaps them
    assert len(repair.eval_split.labels) == before - 50  # and clean accuracy is measured on the other images
    repair.check_roles(sets.roles())


def _as_tensors(*arrays: np.ndarray):
    import torch

    return tuple(torch.as_tensor(a) for a in arrays)


def test_overlapping_roles_are_refused_with_both_names_and_the_count():
    roles = {"bonafide train set": ("test", np.arange(10)), "injection keep set": ("test", np.arange(7, 20))}
    with pytest.raises(ConfigError, match="bonafide train set and the injection keep set share 3 images"):
        check_disjoint_roles(roles)
    check_disjoint_roles({"a": ("train", np.arange(5)), "b": ("test", np.arange(5))})  # other splits never clash


def test_injection_targets_drawn_from_the_training_pool_clash_with_bonafide_data():
    datamodule = RobustDataModule(train_on="bonafide", bonafide=BonafideSettings(size=100, holdout_size=20))
    datamodule.setup("fit")
    train_positions = datamodule.bonafide_parts[0]
    import torch

    sets = InjectionSets(*(torch.zeros(0) for _ in range(7)))
    sets.source_split, sets.target_origin, sets.keep_origin = (
        "train",
        torch.as_tensor(train_positions[:2]),
        torch.arange(0),
    )
    with pytest.raises(ConfigError, match="share 2 images"):
        datamodule.check_roles(sets.roles())


# ------------------------------------------------------------------------------------- the saved bonafide parts
def test_indices_file_keeps_both_parts_and_is_read_back_exactly(tmp_path):
    first = RobustDataModule(train_on="bonafide", bonafide=BonafideSettings(size=120, holdout_size=30, seed=4))
    first.setup("fit")
    train, holdout = first.bonafide_parts
    path = tmp_path / "bonafide_indices.json"
    save_indices(
        path, first.bonafide_index, {**first.bonafide_metadata(), "train": train.tolist(), "holdout": holdout.tolist()}
    )
    again = RobustDataModule(train_on="bonafide", bonafide=BonafideSettings(indices_path=str(path), holdout_size=30))
    again.setup("fit")
    np.testing.assert_array_equal(again.bonafide_parts[0], train)
    np.testing.assert_array_equal(again.bonafide_parts[1], holdout)
    assert len(set(train.tolist()) & set(holdout.tolist())) == 0


def test_indices_of_another_pool_are_refused(tmp_path, roots):
    bonafide = BonafideSettings(pool="test_half", size=40)
    half = RobustDataModule(dataset="cifar10", root=str(roots["cifar10"]), train_on="bonafide", bonafide=bonafide)
    half.setup("fit")
    path = tmp_path / "bonafide_indices.json"
    save_indices(
        path, half.bonafide_index, {**half.bonafide_metadata(), "train": half.bonafide_parts[0].tolist(), "holdout": []}
    )
    bonafide = BonafideSettings(indices_path=str(path))
    other = RobustDataModule(dataset="cifar10", root=str(roots["cifar10"]), train_on="bonafide", bonafide=bonafide)
    with pytest.raises(ConfigError, match=r"data.bonafide.indices_path .* written for pool='test_half'"):
        other.setup("fit")


@pytest.mark.parametrize(
    "payload, error, match",
    [
        ({"indices": [1, 2, 2]}, DataError, "repeats indices"),
        ({"indices": [1, 2, 3], "train": [1, 2], "holdout": [2, 3]}, DataError, "share 1 images"),
        ({"indices": [1, 99999]}, ConfigError, "beyond the pool"),
    ],
    ids=["duplicates", "overlapping-parts", "beyond-pool"],
)
def test_broken_indices_files_are_refused(tmp_path, payload, error, match):
    path = tmp_path / "bonafide_indices.json"
    path.write_text(__import__("json").dumps(payload))
    datamodule = RobustDataModule(train_on="bonafide", bonafide=BonafideSettings(indices_path=str(path)))
    with pytest.raises(error, match=match):
        datamodule.setup("fit")


def test_indices_path_that_is_a_folder_is_refused(tmp_path):
    datamodule = RobustDataModule(train_on="bonafide", bonafide=BonafideSettings(indices_path=str(tmp_path)))
    with pytest.raises(DataError, match="is a folder"):
        datamodule.setup("fit")


def test_oversized_holdout_and_eval_sizes_name_their_setting():
    with pytest.raises(ConfigError, match="data.bonafide.holdout_size 175 leaves 5 of the 180"):
        RobustDataModule(train_on="bonafide", bonafide=BonafideSettings(size=180, holdout_size=175)).setup("fit")
    with pytest.raises(ConfigError, match="data.eval_size 5"):
        RobustDataModule(eval_size=5).setup("fit")


def test_from_scratch_normalisation_uses_only_the_bonafide_training_images():
    from mcrobust.data.sources import channel_statistics

    datamodule = RobustDataModule(train_on="bonafide", bonafide=BonafideSettings(size=60, holdout_size=10))
    datamodule.setup("fit")
    expected = channel_statistics(datamodule.pool.images[datamodule.bonafide_parts[0]])
    assert datamodule.mean == expected[0] and datamodule.std == expected[1]
    assert datamodule.mean != channel_statistics(datamodule.pool.images)[0]


def test_poisoning_rate_outside_zero_one_is_refused():
    from mcrobust.data.datamodules import PoisonSettings

    with pytest.raises(ConfigError, match=r"data.poison.rate must be in \[0, 1\]"):
        PoisonSettings(rate=1.5)
