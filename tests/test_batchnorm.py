"""recompute_bn against BN statistics computed directly from the loader, for plain nets and curve points."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mcrobust.batchnorm import recompute_bn
from mcrobust.curves import CurveModel
from mcrobust.errors import ConfigError


def bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(80, 4))


def images(count: int = 24) -> TensorDataset:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(count, 3, 6, 6, generator=generator) * 2 + 0.5  # far from BN's initial mean 0, variance 1
    return TensorDataset(x, torch.arange(count) % 4)


def reference_statistics(net: nn.Sequential, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the batch means and of the unbiased batch variances of the first BN layer's input."""
    means, variances = [], []
    with torch.no_grad():
        for x, _ in loader:
            features = net[0](x).transpose(0, 1).flatten(1)  # channels x (batch * height * width)
            means.append(features.mean(1))
            variances.append(features.var(1, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("batch_size", [24, 8], ids=["one-batch", "three-batches"])
def test_statistics_equal_those_computed_from_the_loader(batch_size):
    net = bn_net().eval()
    grad_seen = []
    net[1].register_forward_hook(lambda module, inputs, output: grad_seen.append(output.requires_grad))
    loader = DataLoader(images(), batch_size=batch_size)
    assert recompute_bn(net, loader) is True
    assert grad_seen == [False] * len(loader)  # one pass, no autograd graph
    mean, variance = reference_statistics(net, loader)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, variance)
    if batch_size == 24:  # one batch: the statistics of the whole data set
        everything = net[0](images().tensors[0]).detach().transpose(0, 1).flatten(1)
        torch.testing.assert_close(net[1].running_var, everything.var(1, unbiased=True))
    assert net[1].momentum == 0.1 and not net.training and not net[1].training


def test_modes_are_restored_per_module():
    net = bn_net().train()
    net[1].eval()  # a frozen BN inside a net in train mode
    recompute_bn(net, DataLoader(images(), batch_size=12))
    assert net.training and not net[1].training and net[0].training


def test_batches_may_be_tensors_or_dicts():
    net = bn_net()
    x = images().tensors[0]
    recompute_bn(net, [x[:12], x[12:]])
    from_tensors = net[1].running_mean.clone()
    recompute_bn(net, [{"image": x[:12], "label": 0}, {"image": x[12:], "label": 1}])
    torch.testing.assert_close(net[1].running_mean, from_tensors)
    with pytest.raises(ConfigError, match="dict with keys"):
        recompute_bn(net, [{"pixels": x}])
    assert net[1].momentum == 0.1  # restored after the error, too


def test_a_net_without_batchnorm_is_left_alone():
    class Untouchable:
        def __iter__(self):
            raise AssertionError("no pass over the data without BN")

    assert recompute_bn(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), Untouchable()) is False


def test_curve_point_statistics_equal_those_of_the_materialised_point():
    torch.manual_seed(1)
    curve = CurveModel(bn_net())
    curve.set_endpoints(bn_net().state_dict(), bn_net().state_dict())
    curve.eval()
    loader = DataLoader(images(), batch_size=8)
    t = 0.35
    plain = curve.materialize(t)
    assert recompute_bn(plain, loader) and recompute_bn(curve.at(t), loader)
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(curve.template.get_buffer(name), buffer, msg=name)
    assert not curve.training and not curve.template[1].training
    x = images().tensors[0][:5]
    torch.testing.assert_close(curve.at(t)(x), plain.eval()(x))
    assert all(p.grad is None for p in curve.parameters())
