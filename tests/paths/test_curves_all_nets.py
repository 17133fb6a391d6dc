"""Curves over every registered net and a torchvision model: endpoints reproduced, only free bends train."""

from __future__ import annotations

import pytest
import torch
import torchvision

from mcrobust.nets import create_net, list_nets
from mcrobust.paths.curves import CurveModel

KWARGS = {"preresnet": {"depth": 20}}
NETS = [(name, lambda name=name: create_net(name, **KWARGS.get(name, {}))) for name in list_nets()]
NETS.append(("torchvision-resnet18", lambda: torchvision.models.resnet18(num_classes=10)))
CURVES = [pytest.param(kind, bends, id=f"{kind}-{bends}") for kind in ("bezier", "polychain") for bends in (3, 5)]


def randomized(make) -> torch.nn.Module:
    """A fresh net with non-trivial BN statistics, in eval mode."""
    net = make()
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize(("name", "make"), NETS, ids=[name for name, _ in NETS])
@pytest.mark.parametrize(("kind", "bends"), CURVES)
def test_curve_reproduces_endpoints_and_trains_only_free_bends(name, make, kind, bends):
    torch.manual_seed(0)
    start, end = randomized(make), randomized(make)
    curve = CurveModel(make(), kind=kind, num_bends=bends).eval()
    curve.set_endpoints(start.state_dict(), end.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(curve.endpoint(0)(x), start(x))
        torch.testing.assert_close(curve.endpoint(1)(x), end(x))
        torch.testing.assert_close(curve(x, 0.0), start(x))  # the template holds A's buffers
    curve(x, 0.37).sum().backward()
    trainable = [p for p in curve.parameters() if p.requires_grad]
    assert len(trainable) == (bends - 2) * len(list(start.parameters()))
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in curve.parameters() if not p.requires_grad)
