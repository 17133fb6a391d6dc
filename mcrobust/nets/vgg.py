"""VGG16 for 32x32 images, with and without BatchNorm (Simonyan & Zisserman 2015; the CIFAR variant of
Garipov et al. 2018 and the paper: three 512-wide linear layers with dropout)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mcrobust.nets.layers import CIFAR10_MEAN, CIFAR10_STD, Normalize
from mcrobust.nets.registry import register_net

VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(nn.Module):
    """VGG16 for 32x32 inputs.

    Args:
        num_classes: number of output logits.
        batch_norm: BatchNorm after every conv (vgg16_bn).
        in_channels: image channels.
        dropout: dropout before the first two linear layers.
        mean: per-channel mean for the Normalize layer (overwritten by the data set's).
        std: per-channel std for the Normalize layer (overwritten by the data set's).
    """

    def __init__(
        self,
        num_classes: int = 10,
        batch_norm: bool = False,
        in_channels: int = 3,
        dropout: float = 0.5,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(mean, std)]
        channels = in_channels
        for item in VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(item, int)
            layers.append(nn.Conv2d(channels, item, 3, padding=1))
            layers += [nn.BatchNorm2d(item)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_net("vgg16")
def vgg16(**kwargs) -> VGG:
    """VGG16 without BatchNorm, as in the paper."""
    return VGG(batch_norm=False, **kwargs)


@register_net("vgg16_bn")
def vgg16_bn(**kwargs) -> VGG:
    """VGG16 with BatchNorm."""
    return VGG(batch_norm=True, **kwargs)
