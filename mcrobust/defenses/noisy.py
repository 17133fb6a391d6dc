"""The noisy-model baseline (Zhao et al. 2020): the endpoints' midpoint plus Gaussian noise scaled by their
distance, drawn reproducibly per (seed, draw).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor

from mcrobust.errors import ConfigError
from mcrobust.utils.seeding import Stream, generator_for


def noisy_weights(
    start: Mapping[str, Tensor],
    end: Mapping[str, Tensor],
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    parameters: Collection[str] | None = None,
) -> dict[str, Tensor]:
    """One draw of the noisy-model baseline: w ~ N((w1 + w2) / 2, (scale * |w2 - w1| / 2)^2) per weight.

    Zhao et al. (2020, §4) compare path connection against the midpoint of the two tampered endpoints perturbed by
    Gaussian noise whose per-weight std is half the endpoints' distance. Only parameters get noise. Buffers are
    not weights: floating ones (BN running statistics, normalisation constants) take the midpoint, integer ones
    (`num_batches_tracked`) the start's value; callers recompute the BN statistics of every draw afterwards.

    Args:
        start: state_dict of the endpoint w1.
        end: state_dict of the endpoint w2, with the same keys and shapes.
        scale: multiplies the noise std (0 gives the plain midpoint).
        generator: source of the noise (a CPU generator makes draws identical on every device and rank).
        parameters: names of the parameters (e.g. `dict(net.named_parameters())`); None: every floating tensor.

    Returns:
        A new state_dict on the devices of `start`.
    """
    if scale < 0:
        raise ConfigError(f"the noise scale must be >= 0, got {scale}")
    if set(start) != set(end):
        key = sorted(set(start) ^ set(end))[0]
        raise ConfigError(f"the endpoints differ in their keys: {key!r} is in only one of them")
    noisy: dict[str, Tensor] = {}
    for key, w1 in start.items():
        w2 = end[key]
        if w1.shape != w2.shape:
            raise ConfigError(f"endpoint B has {key!r} of shape {list(w2.shape)}, endpoint A {list(w1.shape)}")
        if not w1.is_floating_point():
            noisy[key] = w1.clone()
            continue
        w2 = w2.to(w1)
        midpoint = (w1 + w2) / 2
        if parameters is not None and key not in parameters:
            noisy[key] = midpoint
            continue
        device = generator.device if generator is not None else w1.device
        noise = torch.randn(w1.shape, generator=generator, dtype=w1.dtype, device=device).to(w1.device)
        noisy[key] = midpoint + scale * (w2 - w1).abs() / 2 * noise
    return noisy


def draw_generator(seed: int, draw: int) -> torch.Generator:
    """The CPU generator of draw `draw` under `seed`: distinct streams per draw, identical across runs and ranks."""
    return generator_for(seed, Stream.NOISY_DRAW, draw)
