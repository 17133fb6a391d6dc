"""Every registered net: Normalize first, forward and backward on a 32x32 batch, the expected sizes."""

from __future__ import annotations

import pytest
import torch

from mcrobust.errors import ConfigError
from mcrobust.nets import Normalize, PreResNet, create_net, list_nets

SMALL_KWARGS = {"preresnet": {"depth": 20}}


@pytest.mark.parametrize("name", list_nets())
def test_every_registered_net_runs_forward_and_backward(name):
    net = create_net(name, num_classes=7, **SMALL_KWARGS.get(name, {}))
    first = next(m for m in net.modules() if not list(m.children()) and not isinstance(m, torch.nn.Sequential))
    assert isinstance(first, Normalize), f"{name} must start with Normalize"
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = net(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "params"),
    [("preresnet", {"depth": 20}, 272_282), ("preresnet", {"depth": 110}, 1_146_842), ("resnet18", {}, 11_173_962)],
    ids=["preresnet20", "preresnet110", "resnet18"],
)
def test_parameter_counts_match_the_literature(name, kwargs, params):
    assert sum(p.numel() for p in create_net(name, **kwargs).parameters()) == params


def test_list_and_create():
    assert {"tiny", "vgg16", "vgg16_bn", "preresnet", "resnet18"} <= set(list_nets())
    with pytest.raises(ConfigError, match="unknown net"):
        create_net("alexnet")
    with pytest.raises(ConfigError, match="6n\\+2"):
        PreResNet(depth=21)


def test_normalize_uses_given_statistics_and_updates_in_place():
    layer = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    buffer = layer.mean
    x = torch.full((1, 3, 2, 2), 0.75)
    torch.testing.assert_close(layer(x), torch.ones(1, 3, 2, 2))
    layer.set_statistics((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert layer.mean is buffer
    torch.testing.assert_close(layer(x), x)
