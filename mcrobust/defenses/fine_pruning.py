"""Fine-Pruning (Liu et al. 2018), pure torch: find the last conv layer, measure how strongly the clean data
activates each of its channels, and zero the least active ones (with the BN channels that follow), before fine-tuning.

`mcrobust.systems.fine_pruning` composes these functions; fine-tuning and training from scratch need nothing here
(they are `EndpointSystem` on the bonafide data).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mcrobust.errors import ConfigError
from mcrobust.utils.modes import device_of, eval_mode


# ------------------------------------------------------------------------------------------------ Fine-Pruning
@dataclass
class ChannelBlock:
    """A layer and what directly consumes its output: the channels Fine-Pruning measures and removes.

    Args:
        layer: the pruned layer, an nn.Conv2d (its filters) or a BatchNorm (its channels, e.g. the final BN of a
            pre-activation ResNet, whose last conv feeds a residual add).
        batch_norm: the BatchNorm applied to a conv's output, if any (its affine weights are zeroed too).
        relu: whether an `nn.ReLU` module is applied next (activations are then measured after it).
    """

    layer: nn.Conv2d | _BatchNorm
    batch_norm: _BatchNorm | None = None
    relu: bool = False

    @property
    def channels(self) -> int:
        """Number of output channels of the layer."""
        return self.layer.out_channels if isinstance(self.layer, nn.Conv2d) else self.layer.num_features

    @property
    def measured(self) -> nn.Module:
        """The module whose output, passed through ReLU when `relu`, is the channel activation."""
        return self.batch_norm if self.batch_norm is not None else self.layer

    def describe(self) -> str:
        """Where activations are measured, for logs ('after BatchNorm2d + ReLU')."""
        where = f"after {type(self.measured).__name__}"
        return where + (" + ReLU" if self.relu else " (no ReLU module follows)")


def last_conv_name(net: nn.Module) -> str:
    """Name of the last `nn.Conv2d` in registration order, Fine-Pruning's default layer (Liu et al. 2018)."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ConfigError(f"{type(net).__name__} has no nn.Conv2d layer to prune")
    return names[-1]


def prunable_layer(net: nn.Module, name: str) -> nn.Conv2d | _BatchNorm:
    """The nn.Conv2d or BatchNorm called `name` in `net`, or a ConfigError naming the conv layers."""
    module = dict(net.named_modules()).get(name)
    if not isinstance(module, (nn.Conv2d, _BatchNorm)):
        convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
        raise ConfigError(f"model.layer {name!r} is not an nn.Conv2d or BatchNorm of the net; e.g. one of {convs}")
    return module


def channel_block(net: nn.Module, layer: nn.Conv2d | _BatchNorm, example: Tensor) -> ChannelBlock:
    """Find the BatchNorm and ReLU modules that take `layer`'s output, by one traced forward pass in eval mode.

    The data flow is read from tensor identity in forward hooks (a module whose input *is* the layer's output
    consumes it), so any architecture works without a graph tracer; outputs consumed by functional code (a residual
    add, `F.relu`) are not followed, and the layer's output itself is then measured and zeroed.

    Args:
        net: the network holding `layer`.
        layer: the layer to prune (nn.Conv2d or BatchNorm).
        example: a small input batch (one or two images) on the net's device.
    """
    calls: list[tuple[nn.Module, Any, Any]] = []

    def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        calls.append((module, inputs[0] if inputs else None, output))

    handles = [module.register_forward_hook(record) for module in net.modules()]
    try:
        with eval_mode(net), torch.no_grad():
            net(example)
    finally:
        for handle in handles:
            handle.remove()
    output = next((out for module, _, out in calls if module is layer), None)
    if output is None:
        raise ConfigError(f"the pruned layer {type(layer).__name__} is not called by {type(net).__name__}.forward")
    block = ChannelBlock(layer)
    if isinstance(layer, nn.Conv2d):
        block.batch_norm = next(
            (m for m, x, _ in calls if x is output and isinstance(m, _BatchNorm) and m.num_features == block.channels),
            None,
        )
    source = next(out for m, _, out in calls if m is block.batch_norm) if block.batch_norm is not None else output
    block.relu = any(x is source and isinstance(m, nn.ReLU) for m, x, _ in calls)
    return block


def channel_activations(
    net: nn.Module, block: ChannelBlock, loader: Iterable[Any], device: torch.device | str | None = None
) -> Tensor:
    """Mean activation of each output channel of `block` over every image and position of `loader`, in eval mode.

    Fine-Pruning ranks channels by their average activation on clean data (Liu et al. 2018, §4): backdoor
    channels stay dormant on clean inputs. Measured after the following ReLU when there is one (`block.relu`).

    Args:
        net: the network (BN uses its running statistics: eval mode).
        block: the layer and its consumers, from :func:`channel_block`.
        loader: batches of images (tensors, or tuples whose first item is the images).
        device: where images go; default the device of the layer's weight.

    Returns:
        A float64 CPU tensor of `block.channels` means.
    """
    target = torch.device(device) if device is not None else device_of(block.layer)
    total = torch.zeros(block.channels, dtype=torch.float64, device=target)
    count = 0

    def accumulate(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        nonlocal total, count
        values = torch.relu(output) if block.relu else output  # before an in-place ReLU overwrites it
        total += values.transpose(0, 1).flatten(1).to(torch.float64).sum(dim=1)
        count += values.numel() // values.shape[1]

    handle = block.measured.register_forward_hook(accumulate)
    try:
        with eval_mode(net), torch.no_grad():
            for batch in loader:
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                net(images.to(target))
    finally:
        handle.remove()
    if count == 0:
        raise ConfigError("no images to measure channel activations on: the bonafide loader is empty")
    return (total / count).cpu()


def least_active_channels(activations: Tensor, ratio: float) -> Tensor:
    """Indices of the round(ratio * C) channels with the smallest mean activation (ties: lower index first).

    Args:
        activations: one mean activation per channel.
        ratio: fraction of channels to choose, in [0, 1).
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"model.prune_ratio must be in [0, 1), got {ratio}")
    count = round(ratio * len(activations))
    return torch.sort(torch.argsort(activations, stable=True)[:count]).values


def zero_channels(block: ChannelBlock, mask: Tensor) -> None:
    """Zero the parameters that produce the masked-out channels (mask 0), so their output is exactly zero.

    The conv's filters (and bias) and the following BatchNorm's weight and bias (or a pruned BatchNorm's own) are
    zeroed: the channel then leaves BN, and ReLU, as 0 in train and eval mode, gets zero gradients behind a ReLU,
    and the plain architecture loads the state_dict as it is and computes the same function. Call it again after
    every optimizer step (gradients, weight decay and momentum of a zero stay zero behind a ReLU, not in general).
    A BatchNorm without affine weights cannot be zeroed: its pruned channel is then a constant, not 0.

    Args:
        block: the pruned layer and its BatchNorm.
        mask: one value per channel, 0 for pruned and 1 for kept.
    """
    tensors = [block.layer.weight, block.layer.bias]
    if block.batch_norm is not None:
        tensors += [block.batch_norm.weight, block.batch_norm.bias]
    pruned = mask == 0
    with torch.no_grad():
        for tensor in tensors:
            if tensor is not None:
                tensor[pruned.to(tensor.device)] = 0.0
