"""EpochSampler: fixed-length epochs tiled from a small set, a pure function of (seed, epoch), DDP-consistent."""

from __future__ import annotations

import pytest
import torch

from mcrobust.data.datamodules import BonafideSettings, RobustDataModule
from mcrobust.data.samplers import EpochSampler, UnpaddedShardSampler
from mcrobust.nets import TinyNet
from mcrobust.systems import EndpointSystem
from mcrobust.testing import quiet_trainer


def order(sampler: EpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_tiles_whole_passes_without_replacement_and_cuts_to_the_epoch_length():
    sampler = EpochSampler(range(7), epoch_samples=20, seed=3)
    items = order(sampler, 0)
    assert len(items) == len(sampler) == 20
    for start in (0, 7):  # two complete passes: every item exactly once in each
        assert sorted(items[start : start + 7]) == list(range(7))
    assert len(set(items[14:])) == 6  # the cut third pass repeats nothing either


def test_order_is_a_pure_function_of_seed_and_epoch():
    first, again = EpochSampler(range(50), 120, seed=1), EpochSampler(range(50), 120, seed=1)
    assert order(first, 4) == order(again, 4)  # a resumed run at epoch 4 sees the same batches
    assert order(first, 4) != order(first, 5)
    assert order(first, 4) != order(EpochSampler(range(50), 120, seed=2), 4)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_one_global_order(world):
    single = EpochSampler(range(10), 31, seed=0)
    single.set_epoch(2)
    shards = [EpochSampler(range(10), 31, num_replicas=world, rank=r, seed=0) for r in range(world)]
    for shard in shards:
        shard.set_epoch(2)
    lengths = {len(shard) for shard in shards}
    assert lengths == {-(-31 // world)}  # equal shares: no rank waits on a collective
    interleaved = [item for step in zip(*(list(s) for s in shards), strict=True) for item in step]
    assert interleaved[:31] == single.global_order()[:31].tolist()


def test_none_is_one_shuffled_pass():
    sampler = EpochSampler(range(13), None, seed=0)
    assert sorted(order(sampler, 0)) == list(range(13))


def test_is_a_distributed_sampler_that_lightning_keeps():
    assert isinstance(EpochSampler(range(3), 5), torch.utils.data.DistributedSampler)
    assert isinstance(UnpaddedShardSampler(range(3), 1, 0), torch.utils.data.DistributedSampler)


@pytest.mark.parametrize("epoch_samples", [None, 96])
def test_bonafide_size_does_not_change_the_budget_at_a_fixed_epoch_length(epoch_samples, tmp_path):
    """The paper's protocol: N=50 and N=500 get the same number of optimizer steps (checkpoint global_step)."""
    steps = {}
    for size in (50, 500):
        bonafide = BonafideSettings(size=size, holdout_size=10)
        datamodule = RobustDataModule(
            batch_size=32, train_on="bonafide", bonafide=bonafide, epoch_samples=epoch_samples
        )
        system = EndpointSystem(TinyNet(width=4))
        trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(system, datamodule)
        steps[size] = trainer.global_step
    if epoch_samples is None:
        assert steps == {50: 2 * 2, 500: 2 * 16}  # one pass over 40 / 490 training images
    else:
        assert steps == {50: 2 * 3, 500: 2 * 3}  # 96 samples = 3 batches of 32 at every N
