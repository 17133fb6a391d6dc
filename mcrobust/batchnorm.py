"""Exact BatchNorm statistics for a point on a path, recomputed from data.

The weights of a point on a curve were never trained as one network, so its BN running statistics
must be recomputed before it is evaluated (Garipov et al. 2018). The cumulative pass
itself is `torch.optim.swa_utils.update_bn`; this wrapper adds what it leaves out: no autograd,
dict batches, the model's device, and restoring every submodule's mode and momentum even on error.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from mcrobust.errors import ConfigError

INPUT_KEYS = ("x", "input", "inputs", "image", "images")
"""Keys under which a dict batch holds the network's input."""


def recompute_bn(model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None) -> bool:
    """Reset every BN layer's running statistics and recompute them exactly over one pass of `loader`.

    With momentum None, BN keeps the cumulative average over batches: the mean of the batch means and
    the mean of the unbiased batch variances (equal to the statistics of the whole loader when it has
    one batch; batches of equal size keep the means exact).

    Args:
        model: any module, e.g. `curve.at(t)`; its BN buffers are updated in place.
        loader: batches that are tensors, (input, target, ...) tuples/lists or dicts with an input key.
        device: where to move the inputs; by default the device of the model's first parameter or buffer.

    Returns:
        Whether the model has BN layers that track running statistics (if not, no pass is made).
    """
    layers = [module for module in model.modules() if isinstance(module, _BatchNorm) and module.track_running_stats]
    if not layers:
        return False
    modes = {module: module.training for module in model.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    try:
        with torch.no_grad():
            update_bn(_inputs(loader), model, device=torch.device(device) if device is not None else _device_of(model))
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return True


def _inputs(loader: Iterable[Any]) -> Iterator[Tensor]:
    """The network inputs of each batch, in the tensor form update_bn expects."""
    for batch in loader:
        if isinstance(batch, Mapping):
            key = next((key for key in INPUT_KEYS if key in batch), None)
            if key is None:
                raise ConfigError(f"a BN batch is a dict with keys {sorted(batch)}; name its input one of {INPUT_KEYS}")
            batch = batch[key]
        elif isinstance(batch, (list, tuple)):
            batch = batch[0]
        yield batch


def _device_of(model: nn.Module) -> torch.device | None:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if tensor is None else tensor.device
