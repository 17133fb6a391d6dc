"""Per-sample random numbers from a counter-based hash of (seed, stream, dataset index, element position).

Exact 32-bit integer arithmetic, vectorised on the input's device, with no generator state, no host sync and no
Python loop: a sample's draw does not depend on batch size, batch composition, DDP sharding or the device, and costs
about what ``torch.rand`` costs for the same shape. PGD's random starts and the Hessian's start vectors use it.

`derived_seed` (and `generator_for`) is the one seed mixer of the package: every generator seeded from a run's seed
and counters (sampler orders, augmentation draws, the curve's t, the noisy baseline's draws, injection sets) takes
its seed from it, with its own `Stream`, so no two uses of one run seed share a stream.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def mix32_(x: Tensor) -> Tensor:
    """Hash int64 tensors holding 32-bit values in place; a bijection on [0, 2^32).

    Two multiply-xorshift rounds with the constants of Wellons' hash-prospector ([16 21f0aaad 15 735a2d97 15]).
    Both multipliers are below 2^31, so every product fits in int64 exactly: identical bits on every device.
    """
    x.bitwise_xor_(x >> 16).mul_(0x21F0AAAD).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 15).mul_(0x735A2D97).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 15)


def mix32(value: int) -> int:
    """`mix32_` of one integer's low 32 bits, in exact Python integer arithmetic (the same bits, no tensor)."""
    x = value & _MASK32
    x = ((x ^ (x >> 16)) * 0x21F0AAAD) & _MASK32
    x = ((x ^ (x >> 15)) * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


@enum.unique
class Stream(enum.IntEnum):
    """The streams of one run seed, the first counter of every `derived_seed`: one member per use, never shared."""

    EPOCH_ORDER = 1  # EpochSampler: the order of epoch e
    AUGMENTATION = 2  # EpochBatchSampler: the crop and flip draws of epoch e
    CURVE_T = 3  # CurveSystem: the t of (step, rank)
    NOISY_DRAW = 4  # the noisy-model baseline: draw k
    INJECTION_SETS = 5  # choose_injection_sets: which images, which attacker labels
    TRAIN_ATTACK = 6  # AdversarialSystem: the PGD seed of epoch e


_LANE_KEYS = (0x9E3779B9, 0x7F4A7C15)
"""The two words of the 64-bit golden ratio 0x9E3779B97F4A7C15: the start and key of each lane of `derived_seed`."""


def derived_seed(seed: int, *counters: int) -> int:
    """A seed in [0, 2^63) for the stream `counters` (a `Stream`, then e.g. epoch or step) of the run seed `seed`.

    Why: the ad-hoc ``seed * a + counter`` seeds collide across runs (seed 1, epoch 0 is seed 0, epoch a) and across
    uses; here each value's low 64 bits, as two 32-bit words, are folded into two `mix32` lanes, h <- mix32(h ^
    mix32(word + key)), a bijection of h for a fixed word and of the word for a fixed h. So two calls that differ in
    one value, both in [0, 2^32), always give different seeds; any other two collide with probability about 2^-63.
    The result is a valid `torch.Generator.manual_seed` (and `numpy.random.default_rng`) seed.

    Args:
        seed: the run seed (any integer; its low 64 bits count).
        counters: the stream and its counters, e.g. ``Stream.EPOCH_ORDER, epoch``.
    """
    values = (seed, *counters)
    lanes = []
    for key in _LANE_KEYS:
        h = mix32(key ^ len(values))
        for value in values:
            for word in (value & _MASK32, (value >> 32) & _MASK32):
                h = mix32(h ^ mix32(word + key))
        lanes.append(h)
    return (lanes[1] & 0x7FFFFFFF) << 32 | lanes[0]


def generator_for(seed: int, *counters: int) -> torch.Generator:
    """A CPU generator seeded with `derived_seed(seed, *counters)`: the same numbers on every device, rank and run.

    Args:
        seed: the run seed.
        counters: the stream and its counters, e.g. ``Stream.CURVE_T, step, rank``.
    """
    return torch.Generator().manual_seed(derived_seed(seed, *counters))


def per_sample_uniform(seed: int, index: Tensor, shape: Sequence[int], stream: int = 0) -> Tensor:
    """Uniform numbers in [0, 1) of shape ``[len(index), *shape]``, a pure function of (seed, stream, index, position).

    Why: evaluation randomness (PGD starts, power-iteration vectors) must not depend on batching or DDP sharding
    (docs/architecture.md), so each sample's numbers come from its dataset index, never from a shared generator state.
    Distinct indices in [0, 2^32) get distinct keys; 24 random bits per number.

    Args:
        seed: run seed (its low 32 bits are used).
        index: dataset indices of the samples, integer tensor of shape [N]; the result lives on its device.
        shape: shape of one sample's numbers.
        stream: independent stream number, for several draws per sample.
    """
    seed_key = mix32(seed)
    stream_key = mix32(seed_key ^ mix32(stream + 0x9E3779B9))
    keys = mix32_(mix32_((index.to(torch.int64).reshape(-1, 1) & _MASK32) ^ seed_key) ^ stream_key)
    positions = mix32_(torch.arange(math.prod(shape), device=index.device, dtype=torch.int64))
    bits = mix32_(keys ^ positions) >> 8
    return bits.to(torch.float32).mul_(2.0**-24).view(len(keys), *shape)


def per_sample_normal(seed: int, index: Tensor, shape: Sequence[int], stream: int = 0) -> Tensor:
    """Standard normal numbers per sample (Box-Muller on :func:`per_sample_uniform`); same guarantees.

    Args:
        seed: run seed (its low 32 bits are used).
        index: dataset indices of the samples, integer tensor of shape [N].
        shape: shape of one sample's numbers.
        stream: independent stream number, for several draws per sample.
    """
    uniform = per_sample_uniform(seed, index, (2, *shape), stream)
    radius = torch.log1p(-uniform[:, 0]).mul_(-2.0).sqrt_()  # 1 - u in (0, 1]: finite
    return radius.mul_(torch.cos(uniform[:, 1].mul_(2.0 * math.pi)))
