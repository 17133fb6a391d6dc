"""Layers shared by the architectures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the first layer, so every net takes pixels in [0,1].

    mean and std are persistent buffers: they travel with checkpoints and exported state dicts, and the
    systems overwrite them with the data set's statistics at set-up.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError("Normalize needs one positive std per mean")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def set_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Overwrite the statistics in place (keeps the buffers' identity for curves and DDP)."""
        self.mean.copy_(torch.tensor(mean, dtype=self.mean.dtype).view_as(self.mean))
        self.std.copy_(torch.tensor(std, dtype=self.std.dtype).view_as(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.numel()}"


def find_normalize(net: nn.Module) -> Normalize | None:
    """The net's Normalize layer, if it has one."""
    return next((m for m in net.modules() if isinstance(m, Normalize)), None)
