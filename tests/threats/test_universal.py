"""The universal perturbation: one delta for the whole batch, on the L2 ball, found where the loss rises fastest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcrobust.threats.universal import easiest_target, project_l2, universal_perturbation


def linear_model(w: torch.Tensor) -> nn.Module:
    """Two classes, logits (w . x, 0): the cross-entropy of class 0 rises fastest along -w, for every image."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(w.numel(), 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([w.flatten(), torch.zeros_like(w.flatten())]))
        net[1].bias.zero_()
    return net


def test_the_delta_of_a_linear_model_is_eps_along_minus_w():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    x = 0.5 + 0.01 * torch.randn(16, 3, 4, 4)  # away from the clamp at 0 and 1 for a small eps
    y = torch.zeros(16, dtype=torch.long)
    delta = universal_perturbation(linear_model(w), x, y, eps=0.2, steps=10)
    assert delta.shape == x.shape[1:]
    assert float(delta.norm()) == pytest.approx(0.2, rel=1e-5)
    cosine = float((delta * -w).sum() / (delta.norm() * w.norm()))
    assert cosine > 0.999  # the exact maximiser of the batch loss on the ball: -eps w / ||w||


def test_it_raises_the_loss_and_leaves_parameters_grads_and_bn_statistics_alone():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net.train()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    delta = universal_perturbation(net, x, y, eps=1.0, steps=5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN running stats untouched
    assert all(p.grad is None for p in net.parameters()) and net.training  # grads untouched, mode given back
    with torch.no_grad():
        net.eval()
        loss = nn.functional.cross_entropy
        assert loss(net((x + delta).clamp(0, 1)), y) > loss(net(x), y)
    assert float(delta.norm()) <= 1.0 + 1e-5


def test_a_warm_start_outside_the_ball_is_projected_and_zero_steps_return_it():
    start = torch.full((3, 4, 4), 1.0)
    delta = universal_perturbation(
        linear_model(torch.ones(3, 4, 4)), torch.rand(2, 3, 4, 4), torch.zeros(2).long(), eps=0.5, steps=0, start=start
    )
    assert torch.allclose(delta, project_l2(start, 0.5)) and float(delta.norm()) == pytest.approx(0.5)
    inside = torch.full((3, 4, 4), 0.01)
    assert torch.equal(project_l2(inside, 0.5), inside)


def test_the_easiest_target_is_the_class_a_small_universal_delta_reaches():
    """A planted shortcut: class 2 reads one pixel with a huge weight (a trigger); classes 0 and 1 are told apart by
    two pixels with a margin that no delta of norm 0.2 can close."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[0, 10] = net[1].weight[1, 11] = 5.0
        net[1].weight[2, 5] = 50.0  # delta[5] > 0.15 sends any image to class 2
        net[1].bias.copy_(torch.tensor([0.0, 0.0, -27.5]))
    y = torch.arange(32) % 2
    x = torch.zeros(32, 3 * 4 * 4)
    x[:, 5] = 0.5
    x[y == 0, 10] = x[y == 1, 11] = 1.0
    x = x.view(32, 3, 4, 4)
    assert torch.equal(net(x).argmax(1), y)
    suspect, deltas, success = easiest_target(net, x, y, torch.zeros(3, 3, 4, 4), eps=0.2, steps=10)
    assert suspect == 2 and success.tolist() == [0.0, 0.0, 1.0]
    assert deltas.shape == (3, 3, 4, 4) and float(deltas[2].norm()) <= 0.2 + 1e-5
    assert float(deltas[2].flatten()[5]) > 0.15  # the targeted delta found the planted pixel
