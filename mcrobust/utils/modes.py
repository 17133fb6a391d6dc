"""A module's modes: context managers that put it into a mode for one computation and restore it after (eval mode
for attacks and the input Hessian, gradients on inside an inference-mode test loop), and the device it lives on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then give each one back its own previous mode.

    Attacks and error injection must not touch BatchNorm statistics; restoring per module (not ``model.train()``)
    keeps e.g. a frozen BN inside a training model frozen.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:  # pre-order: a parent's train() is overridden by its children's own flags
            module.train(training)


@contextmanager
def gradients_on() -> Iterator[None]:
    """Enable autograd locally, even inside ``no_grad`` or ``inference_mode`` (a validation step)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter, else of its first buffer, else the CPU (it holds no tensors).

    Where inputs go when the caller names no device: a network is expected to live on one device.
    """
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device
