"""One training step of a 3-bend Bezier CurveModel against one step of the plain net (goal: <= 1.05x).

Curve step (what `CurveSystem.training_step` does): t ~ U(0,1), w = curve.weights(t), logits = curve.run(x, w),
CE + 0.5 * wd * ||w||^2, backward, SGD step on the free bend. Plain step: forward, CE, backward, SGD step with the
same weight decay inside the optimizer. Both in train mode (BN updates its statistics), same batch, interleaved.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import Row, run_main, time_interleaved, timing_row
from torch import Tensor, nn

from mcrobust.nets import create_net
from mcrobust.paths.curves import CurveModel
from mcrobust.systems.curve import with_weight_decay

NAME = "curve_step"
GOAL = 1.05
WEIGHT_DECAY = 5e-4
NETS: dict[str, dict[str, Any]] = {"preresnet20": {"depth": 20}, "vgg16_bn": {}}  # small first: allocator state


def plain_step(net: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One SGD step of the plain net (weight decay inside the optimizer)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=WEIGHT_DECAY)
    net.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    return step


def curve_step(curve: CurveModel, x: Tensor, y: Tensor, seed: int = 0) -> Callable[[], None]:
    """One SGD step of the curve's free bend at a random t, with the L2 penalty on w(t)."""
    optimizer = torch.optim.SGD(curve.trainable_parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    curve.train()

    def step() -> None:
        t = float(torch.rand((), generator=generator))
        optimizer.zero_grad(set_to_none=True)
        weights = with_weight_decay(curve.weights(t), WEIGHT_DECAY)  # CurveSystem's L2 on w(t)
        F.cross_entropy(curve.run(x, weights), y).backward()
        optimizer.step()

    return step


def bench_net(name: str, batch: int, repeats: int) -> Row:
    """Time the curve step and the plain step of one architecture, interleaved."""
    arch = "preresnet" if name.startswith("preresnet") else name
    torch.manual_seed(0)
    net = create_net(arch, **NETS[name])
    curve = CurveModel(create_net(arch, **NETS[name]), kind="bezier", num_bends=3)
    other = create_net(arch, **NETS[name])
    curve.set_endpoints(net.state_dict(), other.state_dict())
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    timings = time_interleaved({"curve": curve_step(curve, x, y), "plain": plain_step(net, x, y)}, repeats, warmup=2)
    params = sum(p.numel() for p in net.parameters())
    return timing_row(
        NAME,
        f"{name} curve step / plain step",
        f"batch {batch}, {params / 1e6:.2f}M params, bezier 3 bends",
        timings["curve"],
        timings["plain"],
        GOAL,
        note=f"minor page faults per step (median): curve {statistics.median(timings['curve'].minor_faults):.0f}, "
        f"plain {statistics.median(timings['plain'].minor_faults):.0f}",
    )


def run(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Both architectures; --quick: batch 32 and 3 repeats."""
    batch, repeats = (32, 3) if quick else (128, 9)
    rows = [bench_net(name, batch, repeats if name == "vgg16_bn" else 2 * repeats - 1) for name in NETS]
    return rows, {"batch": batch, "weight_decay": WEIGHT_DECAY, "optimizer": "SGD momentum 0.9"}


def main() -> None:
    run_main(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
