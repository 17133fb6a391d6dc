"""Architectures for 32x32 images; every registered net starts with `Normalize` and takes pixels in [0,1]."""

from mcrobust.nets.adapters import AdaptedNet, adapt_net, parse_normalize, unwrap_net, unwrap_state_dict
from mcrobust.nets.layers import Normalize, find_normalize
from mcrobust.nets.preresnet import PreResNet, wide_resnet
from mcrobust.nets.registry import create_net, list_nets, register_net
from mcrobust.nets.resnet import ResNet18
from mcrobust.nets.tiny import TinyNet
from mcrobust.nets.vgg import VGG, vgg16, vgg16_bn, vgg_small_bn

__all__ = [
    "VGG",
    "AdaptedNet",
    "Normalize",
    "PreResNet",
    "ResNet18",
    "TinyNet",
    "adapt_net",
    "create_net",
    "find_normalize",
    "list_nets",
    "parse_normalize",
    "register_net",
    "unwrap_net",
    "unwrap_state_dict",
    "vgg16",
    "vgg16_bn",
    "vgg_small_bn",
    "wide_resnet",
]
