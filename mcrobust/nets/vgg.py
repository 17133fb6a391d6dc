"""VGG nets for 32x32 images, with and without BatchNorm (Simonyan & Zisserman 2015; the CIFAR variant of
Garipov et al. 2018 and the paper: VGG16 with three 512-wide linear layers and dropout), and a small VGG for the
CPU."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mcrobust.errors import ConfigError
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

SMALL_CONFIG: tuple[int | str, ...] = (32, "M", 64, "M", 128, 128, "M", 256, "M")
"""A CPU-sized VGG: four conv stages down to 2x2 (the CIFAR-10 grid of docs/results.md)."""

CONFIGS = {"vgg16": VGG16_CONFIG, "small": SMALL_CONFIG}


class VGG(nn.Module):
    """VGG for 32x32 inputs (VGG16 by default).

    Args:
        num_classes: number of output logits.
        batch_norm: BatchNorm after every conv (vgg16_bn).
        in_channels: image channels.
        dropout: dropout before the first two linear layers.
        mean: per-channel mean for the Normalize layer (overwritten by the data set's).
        std: per-channel std for the Normalize layer (overwritten by the data set's).
        config: the conv stack, 'vgg16' or 'small' (channels per conv, 'M' for a 2x2 max-pool).
        width: width of the hidden linear layers.
    """

    def __init__(
        self,
        num_classes: int = 10,
        batch_norm: bool = False,
        in_channels: int = 3,
        dropout: float = 0.5,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        config: str = "vgg16",
        width: int = 512,
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise ConfigError(f"VGG config {config!r} is unknown; choose one of {', '.join(CONFIGS)}")
        layers: list[nn.Module] = [Normalize(mean, std)]
        channels = in_channels
        pools = 0
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                pools += 1
                continue
            assert isinstance(item, int)
            layers.append(nn.Conv2d(channels, item, 3, padding=1))
            layers += [nn.BatchNorm2d(item)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            channels = item
        side = 32 // 2**pools  # 1 for VGG16; the small net keeps a 2x2 map
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(channels * side * side, width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, num_classes),
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


@register_net("vgg_small_bn")
def vgg_small_bn(**kwargs) -> VGG:
    """A small VGG with BatchNorm (4 conv stages, 256-wide head): the CPU grid's VGG."""
    return VGG(batch_norm=True, config="small", width=256, **kwargs)
