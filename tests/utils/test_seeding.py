"""The one seed mixer: mix32 against an independent uint32 implementation, derived_seed's range, determinism,
distinctness and the independence of the streams it seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from mcrobust.utils.seeding import Stream, derived_seed, generator_for, mix32, mix32_


def reference_mix32(values: np.ndarray) -> np.ndarray:
    """Wellons' [16 21f0aaad 15 735a2d97 15] hash in numpy uint32 arithmetic, which wraps by itself."""
    x = values.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x21F0AAAD)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x735A2D97)
    return x ^ (x >> np.uint32(15))


def reference_derived_seed(seed: int, *counters: int) -> int:
    """derived_seed as its docstring states it, on numpy uint32 words (a second implementation of the spec)."""

    def mix(value: int) -> int:
        return int(reference_mix32(np.array([value % 2**32], dtype=np.uint64))[0])

    values = [value % 2**64 for value in (seed, *counters)]  # two's complement, low 64 bits
    lanes = []
    for key in (0x9E3779B9, 0x7F4A7C15):
        h = mix(key ^ len(values))
        for value in values:
            for word in (value % 2**32, value // 2**32):
                h = mix(h ^ mix((word + key) % 2**32))
        lanes.append(h)
    return (lanes[1] % 2**31) * 2**32 + lanes[0]


VALUES = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 12345, 2**32 + 7, -1, -(2**40)]


def test_mix32_matches_the_tensor_hash_and_an_independent_uint32_implementation():
    values = np.concatenate([np.array([v % 2**32 for v in VALUES]), np.random.default_rng(0).integers(0, 2**32, 500)])
    expected = reference_mix32(values).tolist()
    assert [mix32(int(v)) for v in values] == expected
    assert mix32_(torch.tensor(values.astype(np.int64))).tolist() == expected
    assert mix32(-1) == mix32(0xFFFFFFFF) and mix32(2**32 + 5) == mix32(5)  # the low 32 bits


def test_mix32_is_a_bijection_on_a_block_of_inputs():
    block = np.arange(2**16, dtype=np.uint64) * 65_521  # spread over [0, 2^32)
    assert len(np.unique(reference_mix32(block % 2**32))) == len(block)
    assert len({mix32(int(v)) for v in block[:5000]}) == 5000


@pytest.mark.parametrize("counters", [(), (Stream.CURVE_T, 5, 1), (Stream.EPOCH_ORDER, 2**33), (-3, 0)])
@pytest.mark.parametrize("seed", [0, 7, 2**32 + 1, -5])
def test_derived_seed_is_the_documented_fold_deterministic_and_in_range(seed, counters):
    value = derived_seed(seed, *counters)
    assert value == reference_derived_seed(seed, *counters) == derived_seed(seed, *counters)
    assert 0 <= value < 2**63
    torch.Generator().manual_seed(value)  # a valid torch seed
    np.random.default_rng(value)  # and a valid numpy one


def test_distinct_counters_give_distinct_seeds():
    grid = list(itertools.product(range(12), list(Stream), range(40), range(3)))
    assert len({derived_seed(*key) for key in grid}) == len(grid)
    # what the former `seed * 1_000_003 + epoch` mixed up: seed 1, epoch 0 and seed 0, epoch 1_000_003
    assert derived_seed(1, Stream.EPOCH_ORDER, 0) != derived_seed(0, Stream.EPOCH_ORDER, 1_000_003)
    # the number of counters counts, and so do the high words of a 64-bit seed
    assert len({derived_seed(3), derived_seed(3, 0), derived_seed(3, 0, 0), derived_seed(3 + 2**32)}) == 4


def test_one_changed_value_always_changes_the_low_word():
    """A bijection of the state per value: seeds that differ in one value below 2^32 never collide."""
    rng = np.random.default_rng(1)
    base = [int(v) for v in rng.integers(0, 2**32, 4)]
    lows = set()
    for position in range(4):
        for value in rng.integers(0, 2**32, 300):
            changed = list(base)
            changed[position] = int(value)
            lows.add((position, derived_seed(*changed) & 0xFFFFFFFF))
    assert len(lows) == 4 * 300 and all(low != derived_seed(*base) & 0xFFFFFFFF for _, low in lows)


def first_draws(rank: int, steps: int = 2000) -> np.ndarray:
    """The first uniform of the CURVE_T generator of each step of one rank, under run seed 0."""
    return np.array([float(torch.rand((), generator=generator_for(0, Stream.CURVE_T, s, rank))) for s in range(steps)])


def test_generator_for_gives_uniform_independent_streams():
    first = first_draws(rank=0)
    assert stats.kstest(first, "uniform").pvalue > 1e-3  # consecutive counters: uniform first draws
    assert abs(stats.pearsonr(first, first_draws(rank=1)).statistic) < 0.1  # rank 1 is not rank 0 shifted
    same = [generator_for(4, Stream.NOISY_DRAW, 2), generator_for(4, Stream.NOISY_DRAW, 2)]
    assert torch.equal(torch.randn(5, generator=same[0]), torch.randn(5, generator=same[1]))
    apart = [generator_for(4, stream, 2) for stream in Stream]
    draws = {tuple(torch.randn(3, generator=generator).tolist()) for generator in apart}
    assert len(draws) == len(Stream)  # one run seed, every use its own stream


def test_every_stream_has_its_own_number():
    assert len(Stream.__members__) == len({member.value for member in Stream})
