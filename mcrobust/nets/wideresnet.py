"""Wide ResNets for 32x32 images (Zagoruyko & Komodakis 2016): WRN-depth-widen, pre-activation blocks, with the
optional dropout between the two convolutions of a block. WRN-16-1 is the grid's third architecture."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mcrobust.errors import ConfigError
from mcrobust.nets.layers import CIFAR10_MEAN, CIFAR10_STD, Normalize
from mcrobust.nets.registry import register_net


class WideBlock(nn.Module):
    """BN-ReLU-conv, dropout, BN-ReLU-conv, with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        same = stride == 1 and in_planes == planes
        self.shortcut = None if same else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


@register_net("wideresnet")
class WideResNet(nn.Module):
    """WRN-depth-widen: 3 stages of 16k/32k/64k planes, (depth - 4) / 6 blocks each.

    Args:
        depth: 6n+4 (10, 16, 22, 28, ...).
        widen: the width multiplier k.
        dropout: dropout inside each block.
        num_classes: number of output logits.
        in_channels: image channels.
        mean: per-channel mean for the Normalize layer (overwritten by the data set's).
        std: per-channel std for the Normalize layer (overwritten by the data set's).
    """

    def __init__(
        self,
        depth: int = 16,
        widen: int = 1,
        dropout: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 or widen < 1:
            raise ConfigError(f"wideresnet depth {depth} is not 6n+4 (or widen {widen} < 1); try depth 16, widen 1")
        blocks = (depth - 4) // 6
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        planes_in, stages = 16, []
        for planes, stride in ((16 * widen, 1), (32 * widen, 2), (64 * widen, 2)):
            layers = []
            for index in range(blocks):
                layers.append(WideBlock(planes_in, planes, stride if index == 0 else 1, dropout))
                planes_in = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(planes_in)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.pool(self.relu(self.bn(out))).flatten(1))
