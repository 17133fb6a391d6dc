"""pipeline/scan.py: 'auto' picks the unlearning radius from how far the model's universal perturbations reach."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcrobust.pipeline import scan
from mcrobust.pipeline.scan import calibrated_radius

OFFSETS = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.3, 0.4])
"""How far each image's brightness sits from the decision boundary; labelled 1 above it, 0 below."""


def brightness_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Two classes split by mean brightness (class 1 above 0.5) on 1x8x8 images of uniform brightness 0.5 +- e.

    The targeted universal perturbation of L2 radius r that helps most is uniform, r/8 per pixel (clamping never
    bites here), so it sends an image of the other class over the boundary iff e < r/8: at radii 3, 2, 1.5 and 1
    each class is reached from 5, 4, 3 and 2 of its 6 other images (0.83, 0.67, 0.50, 0.33).
    """
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([-torch.ones(64), torch.ones(64)]))
        net[1].bias.copy_(torch.tensor([32.0, -32.0]))  # logit 1 - logit 0 = 2 (sum of pixels - 32)
    e = torch.cat([-OFFSETS, OFFSETS])
    x = (0.5 + e).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()
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
