"""Exact BatchNorm statistics for a point on a path, recomputed from data.

The weights of a point on a curve were never trained as one network, so its BN running statistics
must be recomputed before it is evaluated (Garipov et al. 2018). One pass in train mode, with no autograd,
accumulates each BN layer's per-channel count, mean and sum of squared deviations of its inputs in float64
(BN in train mode normalises with batch statistics, so the running buffers do not change the pass).
`torch.optim.swa_utils.update_bn` alone is not enough: it gives every batch equal weight, so an uneven last
batch biases the statistics; here each batch counts by its size. Modes are restored even on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mcrobust.errors import ConfigError, DataError
from mcrobust.utils.modes import device_of

INPUT_KEYS = ("x", "input", "inputs", "image", "images")
"""Keys under which a dict batch holds the network's input."""


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et al. 1979)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.squares: Tensor | None = None

    def add(self, x: Tensor) -> None:
        """Merge the statistics of one BN input (channels on dim 1) in float64."""
        values = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()  # channels x (batch * spatial)
        count = values.shape[1]
        variance, mean = torch.var_mean(values, dim=1, correction=0)
        squares = variance * count
        if self.mean is None or self.squares is None:
            self.count, self.mean, self.squares = count, mean, squares
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.squares = self.squares + squares + delta.square() * (self.count * count / total)
        self.count = total

    def write(self, layer: _BatchNorm, batches: int) -> None:
        """Set the layer's running mean, unbiased running variance (as BN keeps it) and batch count."""
        assert self.mean is not None and self.squares is not None and layer.running_mean is not None
        assert layer.running_var is not None and layer.num_batches_tracked is not None
        layer.running_mean.copy_(self.mean)
        layer.running_var.copy_(self.squares / max(self.count - 1, 1))
        layer.num_batches_tracked.fill_(batches)


def recompute_bn(model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None) -> bool:
    """Recompute every BN layer's running statistics exactly over one pass of `loader`.

    The result is the per-channel mean and unbiased variance of each BN layer's inputs over the whole loader,
    whatever the batch sizes. The pass runs the whole model in train mode, as the paper's code does.

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
    target = torch.device(device) if device is not None else device_of(model)
    modes = {module: module.training for module in model.modules()}
    moments = {layer: _Moments() for layer in layers}
    saved = {layer: _buffers(layer) for layer in layers}
    hooks = [layer.register_forward_pre_hook(_accumulate(moments[layer])) for layer in layers]
    try:
        batches = _pass(model, loader, target)
    except BaseException:
        for layer, buffers in saved.items():  # a failed pass leaves the statistics as they were
            _restore(layer, buffers)
        raise
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    for layer, moment in moments.items():
        if moment.count:  # a layer the forward never reached keeps its statistics
            moment.write(layer, batches)
        else:
            _restore(layer, saved[layer])
    return True


def _pass(model: nn.Module, loader: Iterable[Any], device: torch.device | None) -> int:
    """One forward pass over the loader in train mode without autograd; returns the number of batches."""
    model.train()
    batches = 0
    with torch.no_grad():
        for x in _inputs(loader):
            model(x if device is None else x.to(device, non_blocking=True))
            batches += 1
    if not batches:
        raise DataError("the BatchNorm recompute loader yielded no batches; give it at least one image")
    return batches


def _accumulate(moments: _Moments) -> Any:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        moments.add(inputs[0])

    return hook


def _statistics(layer: _BatchNorm) -> list[Tensor]:
    """The layer's running mean, running variance and batch count (it tracks running statistics)."""
    buffers = [layer.running_mean, layer.running_var, layer.num_batches_tracked]
    return [buffer for buffer in buffers if buffer is not None]


def _buffers(layer: _BatchNorm) -> list[Tensor]:
    return [buffer.clone() for buffer in _statistics(layer)]


def _restore(layer: _BatchNorm, buffers: list[Tensor]) -> None:
    for buffer, value in zip(_statistics(layer), buffers, strict=True):
        buffer.copy_(value)


def _inputs(loader: Iterable[Any]) -> Iterator[Tensor]:
    """The network input of each batch."""
    for batch in loader:
        if isinstance(batch, Mapping):
            key = next((key for key in INPUT_KEYS if key in batch), None)
            if key is None:
                raise ConfigError(f"a BN batch is a dict with keys {sorted(batch)}; name its input one of {INPUT_KEYS}")
            batch = batch[key]
        elif isinstance(batch, (list, tuple)):
            batch = batch[0]
        yield batch
