"""Pure baseline pieces: the noisy-model draw's statistics and Fine-Pruning's channel ranking and zeroing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcrobust.defenses.fine_pruning import (
    channel_activations,
    channel_block,
    last_conv_name,
    least_active_channels,
    prunable_layer,
    zero_channels,
)
from mcrobust.defenses.noisy import draw_generator, noisy_weights
from mcrobust.errors import ConfigError
from mcrobust.nets import TinyNet
from mcrobust.nets.preresnet import PreResNet


# ------------------------------------------------------------------------------------------------ noisy model
def endpoints(size: int = 200_000) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    start = {"w": torch.randn(size, generator=generator), "count": torch.tensor(3), "stat": torch.zeros(4)}
    end = {"w": torch.randn(size, generator=generator) * 3 + 1, "count": torch.tensor(7), "stat": torch.ones(4)}
    return start, end


@pytest.mark.parametrize("scale", [1.0, 2.5], ids=["scale-1", "scale-2.5"])
def test_noisy_weights_have_the_midpoint_mean_and_half_distance_std(scale):
    start, end = endpoints()
    noisy = noisy_weights(start, end, scale=scale, generator=draw_generator(0, 0), parameters={"w"})
    midpoint, std = (start["w"] + end["w"]) / 2, scale * (end["w"] - start["w"]).abs() / 2
    standardized = (noisy["w"] - midpoint) / std  # N(0, 1) per weight if the draw is right
    assert abs(float(standardized.mean())) < 0.01  # 5 standard errors of 200k samples
    assert abs(float(standardized.std()) - 1.0) < 0.01
    inside = float(((noisy["w"] - midpoint).abs() < std).double().mean())
    assert abs(inside - 0.6827) < 0.005  # the normal's one-sigma mass, a check of the shape


def test_noisy_weights_leave_buffers_at_the_midpoint_and_counters_at_the_start():
    start, end = endpoints(10)
    noisy = noisy_weights(start, end, generator=draw_generator(0, 0), parameters={"w"})
    torch.testing.assert_close(noisy["stat"], torch.full((4,), 0.5))
    assert int(noisy["count"]) == 3
    everything = noisy_weights(start, end, generator=draw_generator(0, 0))  # no names: every float tensor is noised
    assert not torch.equal(everything["stat"], torch.full((4,), 0.5))


def test_noisy_weights_are_seeded_distinct_per_draw_and_exact_at_scale_zero():
    start, end = endpoints(1000)
    first = noisy_weights(start, end, generator=draw_generator(3, 0))["w"]
    torch.testing.assert_close(noisy_weights(start, end, generator=draw_generator(3, 0))["w"], first, rtol=0, atol=0)
    assert not torch.equal(noisy_weights(start, end, generator=draw_generator(3, 1))["w"], first)
    assert not torch.equal(noisy_weights(start, end, generator=draw_generator(4, 0))["w"], first)
    torch.testing.assert_close(noisy_weights(start, end, scale=0.0)["w"], (start["w"] + end["w"]) / 2)


def test_noisy_weights_refuse_mismatched_endpoints():
    start, end = endpoints(10)
    with pytest.raises(ConfigError, match="'w'"):
        noisy_weights(start, {**end, "w": torch.zeros(11)})
    with pytest.raises(ConfigError, match="'extra'"):
        noisy_weights(start, {**end, "extra": torch.zeros(1)})
    with pytest.raises(ConfigError, match="scale"):
        noisy_weights(start, end, scale=-1.0)


# ------------------------------------------------------------------------------------------------ Fine-Pruning
def test_least_active_channels_picks_exactly_round_ratio_c_of_the_smallest():
    activations = torch.tensor([0.5, 0.1, 0.9, 0.0, 0.3, 0.0, 0.7, 0.2])
    assert least_active_channels(activations, 0.5).tolist() == [1, 3, 5, 7]
    assert least_active_channels(activations, 0.3).tolist() == [3, 5]  # round(2.4) = 2; ties by index
    assert least_active_channels(activations, 0.0).tolist() == []
    with pytest.raises(ConfigError, match="prune_ratio"):
        least_active_channels(activations, 1.0)


def test_channel_block_finds_the_batchnorm_and_relu_of_a_conv():
    net = TinyNet(width=4)
    conv = prunable_layer(net, last_conv_name(net))
    assert last_conv_name(net) == "features.9"
    block = channel_block(net, conv, torch.rand(2, 3, 32, 32))
    assert block.batch_norm is net.features[10] and block.relu and block.channels == 16
    no_bn = TinyNet(width=4, batch_norm=False)
    block = channel_block(no_bn, prunable_layer(no_bn, "features.7"), torch.rand(2, 3, 32, 32))
    assert block.batch_norm is None and block.relu


def test_channel_block_stops_at_a_residual_add_and_accepts_a_batchnorm_layer():
    net = PreResNet(depth=8)
    x = torch.rand(2, 3, 32, 32)
    block = channel_block(net, net.layer3[0].conv2, x)
    assert block.batch_norm is None and not block.relu  # its output goes into `out + shortcut`
    final = channel_block(net, prunable_layer(net, "bn"), x)
    assert final.layer is net.bn and final.relu and final.channels == 64
    with pytest.raises(ConfigError, match="not an nn.Conv2d"):
        prunable_layer(net, "fc")


def test_channel_activations_match_the_post_relu_means_computed_directly():
    torch.manual_seed(0)
    net = TinyNet(width=4)
    for module in net.modules():  # non-trivial running statistics, so eval mode matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.rand(10, 3, 32, 32)
    block = channel_block(net, net.features[9], images[:2])
    loader = [(images[:4], None), (images[4:], None)]  # unequal batches: a per-image, not per-batch, mean
    measured = channel_activations(net, block, loader)
    assert net.training  # measured in eval mode, then given back its mode
    net.eval()
    with torch.no_grad():
        expected = net.features[:12](images).mean(dim=(0, 2, 3)).double()  # up to and including the ReLU
    torch.testing.assert_close(measured, expected)


def test_zero_channels_silences_exactly_the_pruned_channels_in_train_and_eval_mode():
    torch.manual_seed(0)
    net = TinyNet(width=4)
    block = channel_block(net, net.features[9], torch.rand(2, 3, 32, 32))
    mask = torch.ones(16)
    mask[[0, 5, 9]] = 0
    zero_channels(block, mask)
    for training in (True, False):
        net.train(training)
        with torch.no_grad():
            out = net.features[:12](torch.rand(6, 3, 32, 32))
        assert out[:, [0, 5, 9]].abs().max() == 0
        assert out[:, mask == 1].abs().amax(dim=(0, 2, 3)).min() > 0
