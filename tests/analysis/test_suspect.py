"""analysis/suspect.py: the trigger-free scan finds a planted shortcut's class and clears the net without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcrobust.analysis.suspect import SuspectScan, scan_classes


def planted(shortcut: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Five classes told apart by one pixel each, with a margin no delta of norm 0.2 closes; with `shortcut`,
    class 2 also reads pixel 5 with a huge weight, so a delta there sends any image to class 2 (a trigger)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():
        net[1].weight.zero_(), net[1].bias.zero_()
        for c in range(5):
            net[1].weight[c, 10 + c] = 5.0
        if shortcut:
            net[1].weight[2, 5] = 50.0  # pixel 5 is dark on clean images; delta[5] > 0.1 sends any image to class 2
    y = torch.arange(40) % 5
    x = torch.full((40, 3 * 4 * 4), 0.01)  # off the clamp's bounds, where the gradient of clamp(x + delta) is zero
    x[torch.arange(40), 10 + y] = 0.99
    return net, x.view(40, 3, 4, 4), y


def test_the_planted_class_stands_out_and_the_net_without_it_is_cleared():
    net, x, y = planted(shortcut=True)
    assert torch.equal(net(x).argmax(1), y)
    scan = scan_classes(net, x, y, eps=0.2, steps=10)
    assert scan.suspect == 2 and scan.reach == (0.0, 0.0, 1.0, 0.0, 0.0)
    assert scan.stands_out(2, ratio=1.5, min_reach=0.5)
    repaired, x, y = planted(shortcut=False)
    cleared = scan_classes(repaired, x, y, eps=0.2, steps=10)
    assert cleared.reach == (0.0,) * 5 and not cleared.stands_out(2, ratio=1.5, min_reach=0.5)
    assert cleared.as_row(2) == {"scan_suspect": 0, "scan_reach": 0.0, "scan_median_reach": 0.0}


def test_standing_out_needs_the_lead_most_images_and_a_margin_over_the_median():
    scan = SuspectScan((0.9, 0.2, 0.25, 0.3, 0.1))
    assert scan.suspect == 0 and scan.stands_out(0, ratio=1.5, min_reach=0.5)
    assert not scan.stands_out(3, ratio=1.5, min_reach=0.5)  # not the leader
    near = SuspectScan((0.6, 0.5, 0.45, 0.3, 0.1))  # leads from most images, but by less than 1.5 x the median 0.45
    assert not near.stands_out(0, ratio=1.5, min_reach=0.5) and near.stands_out(0, ratio=1.2, min_reach=0.5)
    overtaken = SuspectScan((0.45, 0.6, 0.25, 0.2, 0.1))  # the known suspect 0 no longer leads, still far out
    assert not overtaken.stands_out(0, ratio=1.5, min_reach=0.3)
    assert overtaken.stands_out(0, ratio=1.5, min_reach=0.3, must_lead=False)
    assert not overtaken.stands_out(0, ratio=1.5, min_reach=0.5, must_lead=False)  # the floor still applies
    robust = SuspectScan((0.2, 0.0, 0.0, 0.0, 0.0))  # a robust point: the leader moves a fifth of the images
    assert not robust.stands_out(0, ratio=1.5, min_reach=0.5) and robust.stands_out(0, ratio=1.5, min_reach=0.1)


def test_the_scan_leaves_the_mode_and_the_gradients_alone_and_refuses_no_images():
    net, x, y = planted(shortcut=True)
    net.train()
    scan_classes(net, x, y, eps=0.2, steps=3)
    assert net.training and all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="at least one clean image"):
        scan_classes(net, x[:0], y[:0], eps=0.2, steps=3)
