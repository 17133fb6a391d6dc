"""Our L-inf PGD against torchattacks.PGD with the same settings and model (goal: time ratio <= 1.0).

Settings of Zhao et al. 2020: eps 8/255, step 2/255, 10 steps, uniform random start. Models: TinyNet trained on the
digits for a few epochs (robust accuracy is meaningful) and an untrained PreResNet-20 (timing only). Without the
random start both attacks are deterministic and must give the same robust accuracy (and the same images up to
round-off: ours takes the sign of a summed loss's gradient, torchattacks of a mean loss's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchattacks
from common import Row, accuracy, digits, run_main, time_interleaved, timing_row, trained_tiny
from torch import Tensor, nn

from mcrobust.nets import create_net
from mcrobust.threats.evasion import PGD

NAME = "pgd"
GOAL = 1.0
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


def attacks(model: nn.Module, random_start: bool) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(ours, torchattacks) as functions of (x, y), identically configured."""
    ours = PGD(eps=EPS, alpha=ALPHA, steps=STEPS, random_start=random_start, seed=0)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=random_start)
    return (lambda x, y: ours(model, x, y, torch.arange(len(x)))), (lambda x, y: theirs(x, y))


def agreement_rows(label: str, model: nn.Module, x: Tensor, y: Tensor) -> list[Row]:
    """Robust accuracy of both, with and without the random start (without it they must be equal)."""
    rows = []
    for random_start in (True, False):
        ours, theirs = attacks(model, random_start)
        torch.manual_seed(0)
        adv_ours, adv_theirs = ours(x, y), theirs(x, y)
        acc_ours, acc_theirs = accuracy(model, adv_ours, y), accuracy(model, adv_theirs, y)
        clean = accuracy(model, x, y)
        start = "random start" if random_start else "no random start"
        rows.append(
            Row(
                NAME,
                f"{label} robust acc. |ours - torchattacks|, {start}",
                f"batch {len(x)}, eps 8/255, 10 steps",
                abs(acc_ours - acc_theirs),
                goal=None if random_start else 0.0,
                unit="",
                note=f"robust acc. ours {acc_ours:.4f}, torchattacks {acc_theirs:.4f}, clean {clean:.4f};"
                f" max |x_ours - x_theirs| = {float((adv_ours - adv_theirs).abs().max()):.2e}",
                extra={"ours": acc_ours, "torchattacks": acc_theirs},
            )
        )
    return rows


def timing(label: str, model: nn.Module, x: Tensor, y: Tensor, repeats: int) -> Row:
    """Time both attacks with the random start, interleaved."""
    ours, theirs = attacks(model, random_start=True)
    timings = time_interleaved({"ours": lambda: ours(x, y), "torchattacks": lambda: theirs(x, y)}, repeats)
    return timing_row(
        NAME,
        f"{label} PGD ours / torchattacks",
        f"batch {len(x)}, eps 8/255, alpha 2/255, 10 steps",
        timings["ours"],
        timings["torchattacks"],
        GOAL,
    )


def run(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Trained TinyNet (timing and accuracies) and untrained PreResNet-20 (timing)."""
    batch, repeats = (64, 3) if quick else (128, 9)
    x, y, _ = digits("test")
    x, y = x[:batch], y[:batch]
    tiny = trained_tiny().eval()
    torch.manual_seed(0)
    preresnet = create_net("preresnet", depth=20).eval()
    rows = [timing("tiny", tiny, x, y, repeats), *agreement_rows("tiny", tiny, x, y)]
    small = batch // 2 if quick else batch
    rows.append(timing("preresnet20", preresnet, x[:small], y[:small], max(3, repeats // 2 + 1)))
    settings = {"batch": batch, "eps": EPS, "alpha": ALPHA, "steps": STEPS, "torchattacks": torchattacks.__version__}
    return rows, settings


def main() -> None:
    run_main(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
