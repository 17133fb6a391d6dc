"""Pre-activation ResNets for 32x32 images (He et al. 2016, "Identity Mappings"), as used by
Garipov et al. 2018 and the paper: basic blocks below depth 44, bottlenecks from 44 on; and the Wide ResNets of
Zagoruyko & Komodakis 2016 (WRN-depth-widen), which are the same basic-block nets with wider stages and dropout."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mcrobust.errors import ConfigError
from mcrobust.nets.layers import CIFAR10_MEAN, CIFAR10_STD, Normalize
from mcrobust.nets.registry import register_net


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, with a 1x1 projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None  # between the convolutions, as in WRN
        out = planes * self.expansion
        self.shortcut = None if stride == 1 and in_planes == out else nn.Conv2d(in_planes, out, 1, stride, bias=False)

    def forward(self, x):
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.relu(self.bn2(self.conv1(out)))
        out = self.conv2(out if self.dropout is None else self.dropout(out))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv with 1x1, 3x3, 1x1 kernels and 4x expansion."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        out = planes * self.expansion
        self.shortcut = None if stride == 1 and in_planes == out else nn.Conv2d(in_planes, out, 1, stride, bias=False)

    def forward(self, x):
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


@register_net("preresnet")
class PreResNet(nn.Module):
    """PreResNet-depth for 32x32 images: 3 stages of 16/32/64 planes.

    Args:
        depth: 6n+2 with basic blocks (20, 26, 32, ...) or 9n+2 with bottlenecks from 44 on (110, 164).
        num_classes: number of output logits.
        in_channels: image channels.
        mean: per-channel mean for the Normalize layer (overwritten by the data set's).
        std: per-channel std for the Normalize layer (overwritten by the data set's).
        widen: width multiplier of the stages (basic blocks only; the k of WRN-d-k).
        dropout: dropout between the two convolutions of a basic block (WRN's).
    """

    def __init__(
        self,
        depth: int = 26,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        widen: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        bottleneck = depth >= 44
        divisor = 9 if bottleneck else 6
        if depth < 8 or (depth - 2) % divisor:
            raise ConfigError(f"preresnet depth {depth} is not {divisor}n+2; try 20, 26, 110 or 164")
        if widen < 1 or not 0 <= dropout < 1 or (bottleneck and (widen, dropout) != (1, 0.0)):
            raise ConfigError(
                f"preresnet widen {widen} / dropout {dropout}: need widen >= 1, 0 <= dropout < 1, basic blocks"
            )
        blocks = (depth - 2) // divisor
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        planes_in = 16
        stages = []
        for planes, stride in ((16 * widen, 1), (32 * widen, 2), (64 * widen, 2)):
            layers: list[nn.Module] = []
            for index in range(blocks):
                step = stride if index == 0 else 1
                if bottleneck:
                    layers.append(PreActBottleneck(planes_in, planes, step))
                    planes_in = planes * PreActBottleneck.expansion
                else:
                    layers.append(PreActBlock(planes_in, planes, step, dropout))
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
        out = self.relu(self.bn(out))
        return self.fc(self.pool(out).flatten(1))


@register_net("wideresnet")
def wide_resnet(depth: int = 16, widen: int = 1, dropout: float = 0.0, **kwargs) -> PreResNet:
    """WRN-depth-widen (Zagoruyko & Komodakis 2016): depth 6n+4 counts the three shortcut convolutions, so it is the
    PreResNet of depth - 2 with `widen`-times wider stages (WRN-16-1: the grid's third architecture)."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"wideresnet depth {depth} is not 6n+4; try 16, 22 or 28")
    return PreResNet(depth=depth - 2, widen=widen, dropout=dropout, **kwargs)
