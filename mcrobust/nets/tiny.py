"""A small BN conv net that trains in seconds on a CPU (tests and the demo)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mcrobust.nets.layers import CIFAR10_MEAN, CIFAR10_STD, Normalize
from mcrobust.nets.registry import register_net


@register_net("tiny")
class TinyNet(nn.Module):
    """Three 3x3 conv blocks (conv, BN, ReLU, 2x2 max-pool) and one linear layer.

    Args:
        num_classes: number of output logits.
        width: channels of the first block; the next two have 2x and 4x.
        in_channels: image channels.
        batch_norm: use BatchNorm after each conv.
        mean: per-channel mean for the Normalize layer (overwritten by the data set's).
        std: per-channel std for the Normalize layer (overwritten by the data set's).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        in_channels: int = 3,
        batch_norm: bool = True,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(mean, std)]
        channels = in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
