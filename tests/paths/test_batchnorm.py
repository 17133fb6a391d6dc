"""recompute_bn against BN statistics computed directly over the whole loader, for plain nets and curve points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mcrobust.errors import ConfigError, DataError
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.paths.curves import CurveModel


def bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(80, 4))


def images(count: int = 24) -> TensorDataset:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(count, 3, 6, 6, generator=generator) * 2 + 0.5  # far from BN's initial mean 0, variance 1
    return TensorDataset(x, torch.arange(count) % 4)


def channel_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance (as BN's running_var keeps it) of inputs with channels on dim 1."""
    values = features.transpose(0, 1).flatten(1).double()  # channels x (batch * spatial)
    return values.mean(1).float(), values.var(1, unbiased=True).float()


def reference_statistics(net: nn.Sequential, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of the first BN layer's input over the whole loader, computed directly."""
    with torch.no_grad():
        return channel_statistics(torch.cat([net[0](x) for x, _ in loader]))


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
    assert int(net[1].num_batches_tracked) == len(loader)
    assert net[1].momentum == 0.1 and not net.training and not net[1].training


def two_bn_net() -> nn.Sequential:
    """BN on the input, conv, BN: the second layer's inputs depend on the first normalising with batch statistics."""
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.uniform_(0.5, 2.0)
            layer.bias.uniform_(-1.0, 1.0)
            layer.running_mean.fill_(7.0)  # stale statistics that must not leak into the result
            layer.running_var.fill_(9.0)
    return net


def test_an_uneven_loader_weights_each_batch_by_its_size():
    torch.manual_seed(0)
    net = two_bn_net().eval()
    x = images(10).tensors[0]
    loader = DataLoader(TensorDataset(x), batch_size=4)  # batches of 4, 4 and 2
    assert [len(batch) for (batch,) in loader] == [4, 4, 2]
    assert recompute_bn(net, loader)
    first, conv, second = net[0], net[1], net[2]
    torch.testing.assert_close((first.running_mean, first.running_var), channel_statistics(x))
    with torch.no_grad():  # the pass by hand: the first BN normalises each batch with that batch's statistics
        normalised = [
            F.batch_norm(batch, None, None, first.weight, first.bias, training=True, eps=first.eps)
            for batch in x.split(4)
        ]
        second_inputs = torch.cat([conv(batch) for batch in normalised])
    torch.testing.assert_close((second.running_mean, second.running_var), channel_statistics(second_inputs))
    equal_weight = torch.stack([conv(batch).mean((0, 2, 3)) for batch in normalised]).mean(0).detach()
    assert not torch.allclose(second.running_mean, equal_weight, rtol=1e-4, atol=1e-4)  # the old bias is gone
    assert int(second.num_batches_tracked) == 3 and not net.training


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.BatchNorm1d(4), (7, 4)),
        (nn.BatchNorm1d(4), (7, 4, 5)),
        (nn.BatchNorm3d(4), (7, 4, 2, 3, 3)),
    ],
    ids=["bn1d-flat", "bn1d-sequence", "bn3d"],
)
def test_channels_are_on_dim_1_for_every_batchnorm(layer, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5)) * 3 + 2
    recompute_bn(layer, [x[:3], x[3:5], x[5:]])  # uneven: 3, 2, 2
    torch.testing.assert_close((layer.running_mean, layer.running_var), channel_statistics(x))


def test_an_empty_loader_is_an_error_and_leaves_the_statistics():
    net = two_bn_net()
    with pytest.raises(DataError, match="no batches"):
        recompute_bn(net, [])
    assert float(net[0].running_mean[0]) == 7.0 and net.training


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
