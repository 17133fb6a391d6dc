"""pipeline/scan.py: 'auto' picks the unlearning radius from how far the model's universal perturbations reach."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcrobust.pipeline import scan
from mcrobust.pipeline.scan import calibrated_radius

OFFSETS = torch.tensor([0.0125, 0.025, 0.0375, 0.05, 0.075, 0.1])
"""How far each image's brightness sits from the decision boundary; labelled 1 above it, 0 below."""


def brightness_net(size: int = 32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Two classes split by mean brightness (class 1 above 0.5) on 1 x size x size images of uniform brightness
    0.5 +- e.

    The targeted universal perturbation of L2 radius r that helps most is uniform, r/size per pixel (clamping never
    bites here), so it sends an image of the other class over the boundary iff e < r/size: at radii 3, 2, 1.5 and 1
    times size/32 each class is reached from 5, 4, 3 and 2 of its 6 other images (0.83, 0.67, 0.50, 0.33).
    """
    pixels = size * size
    net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([-torch.ones(pixels), torch.ones(pixels)]))
        net[1].bias.copy_(torch.tensor([pixels / 2, -pixels / 2]))  # logit 1 - logit 0 = 2 (sum of pixels - pixels/2)
    e = torch.cat([-OFFSETS, OFFSETS])
    x = (0.5 + e).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()
    return net, x, (e > 0).long()


def test_auto_takes_the_largest_radius_whose_median_reach_is_within_the_limit():
    net, x, y = brightness_net()
    assert torch.equal(net(x).argmax(1), y)

    radius, medians = calibrated_radius(net, x, y, steps=5)

    assert medians == pytest.approx({"3": 5 / 6, "2": 4 / 6, "1.5": 3 / 6})  # stops at the first within 0.6
    assert radius == 1.5


def test_auto_falls_back_to_the_smallest_radius_when_every_radius_reaches_too_far(monkeypatch):
    net, x, y = brightness_net()
    monkeypatch.setattr(scan, "RADIUS_REACH_LIMIT", 0.2)  # even radius 1 reaches 0.33

    radius, medians = calibrated_radius(net, x, y, steps=5)

    assert radius == scan.RADIUS_LADDER[-1] == 1.0 and list(medians) == ["3", "2", "1.5", "1"]
    assert medians["1"] == pytest.approx(2 / 6)


def test_auto_scales_the_ladder_with_the_root_of_the_pixel_count():
    net, x, y = brightness_net(size=64)  # four times the pixels: every radius doubles, the reach stays the same

    radius, medians = calibrated_radius(net, x, y, steps=5)

    assert medians == pytest.approx({"6": 5 / 6, "4": 4 / 6, "3": 3 / 6}) and radius == 3.0
