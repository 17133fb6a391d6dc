"""Path evaluation at 11 t of a TinyNet curve against its floor (goal: <= 1.2x).

Ours, per t: ``point = curve.at(t)``, ``recompute_bn(point, bonafide)``, ``PointEvaluator().evaluate(point, {clean,
triggered})`` (what `PathEvaluation` does without attack or Hessian). Floor, per t: one hand-written BN pass (reset,
cumulative momentum, train-mode forwards under no_grad) and one evaluation pass (logits, hits, summed CE) over the
same batches with a plain TinyNet. The batches are pre-made tensors, so data loading is not timed. Breakdown rows
(at t = 0.5, no goal) split the ratio into BN recompute, evaluation of the curve point, and the evaluator on a
plain model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from common import Row, digits, run_main, time_interleaved, timing_row, trained_tiny
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mcrobust.nets import create_net
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.paths.curves import CurveModel
from mcrobust.threats.triggers import PatchTrigger

NAME = "path_eval"
GOAL = 1.2
TARGET = 0
Batches = list[tuple[Tensor, Tensor, Tensor]]


def batches(x: Tensor, y: Tensor, size: int) -> Batches:
    """(x, y, dataset index) batches."""
    index = torch.arange(len(x))
    return list(zip(x.split(size), y.split(size), index.split(size), strict=True))


def data(bonafide: int, batch: int) -> tuple[Batches, Batches, Batches]:
    """Bonafide (from the training split), clean and triggered (patch, true class != target) test batches."""
    x_train, y_train, _ = digits("train")
    x, y, _ = digits("test")
    keep = y != TARGET
    triggered = PatchTrigger().apply_tensor(x[keep])
    return (
        batches(x_train[:bonafide], y_train[:bonafide], batch),
        batches(x, y, batch),
        batches(triggered, torch.full((len(triggered),), TARGET), batch),
    )


def floor_bn(model: nn.Module, bn: Batches) -> None:
    """The minimal exact BN pass: reset, cumulative averaging, train-mode forwards without autograd."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    with torch.no_grad():
        for x, _, _ in bn:
            model(x)
    for layer in layers:
        layer.momentum = 0.1
    model.eval()


def floor_eval(model: nn.Module, clean: Batches, triggered: Batches) -> tuple[float, float, float]:
    """The minimal evaluation pass: clean accuracy and loss, triggered accuracy (ASR)."""
    model.eval()
    correct = loss = hits = 0.0
    with torch.no_grad():
        for x, y, _ in clean:
            logits = model(x)
            correct += float((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
        for x, y, _ in triggered:
            hits += float((model(x).argmax(1) == y).sum())
    return correct, loss, hits


def make_curve(seed: int = 1) -> CurveModel:
    """A 3-bend Bezier TinyNet curve between the trained TinyNet and a second (random) endpoint."""
    torch.manual_seed(seed)
    curve = CurveModel(create_net("tiny", num_classes=10), kind="bezier", num_bends=3)
    curve.set_endpoints(trained_tiny().state_dict(), create_net("tiny", num_classes=10).state_dict())
    return curve.eval()


def run(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """The 11-t sweep against 11 floor passes, then the per-t breakdown."""
    from mcrobust.analysis.evaluation import (
        PointEvaluator,  # another engineer's module: imported late, checked in main()
    )

    batch, bonafide, repeats = (64, 128, 3) if quick else (128, 512, 5)
    bn, clean, triggered = data(bonafide, batch)
    sets = {"clean": clean, "triggered": triggered}
    ts = [i / 10 for i in range(11)]
    curve, plain, evaluator = make_curve(), trained_tiny(), PointEvaluator()

    def ours(t_values: Sequence[float] = ts) -> None:
        for t in t_values:
            point = curve.at(t)
            recompute_bn(point, bn)
            evaluator.evaluate(point, sets)

    def floor(t_values: Sequence[float] = ts) -> None:
        for _ in t_values:
            floor_bn(plain, bn)
            floor_eval(plain, clean, triggered)

    sizes = f"11 t, bonafide {bonafide}, clean {sum(len(b[1]) for b in clean)}, triggered "
    sizes += f"{sum(len(b[1]) for b in triggered)}, batch {batch}"
    timings = time_interleaved({"ours": ours, "floor": floor}, repeats)
    rows = [timing_row(NAME, "path eval (11 t) / floor", sizes, timings["ours"], timings["floor"], GOAL)]
    point = curve.at(0.5)
    parts: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "BN recompute of curve.at(t) / floor BN pass": (lambda: recompute_bn(point, bn), lambda: floor_bn(plain, bn)),
        "evaluate(curve.at(t)) / floor eval pass": (
            lambda: evaluator.evaluate(point, sets),
            lambda: floor_eval(plain, clean, triggered),
        ),
        "evaluate(plain) / floor eval pass": (
            lambda: evaluator.evaluate(plain, sets),
            lambda: floor_eval(plain, clean, triggered),
        ),
    }
    for name, (mine, reference) in parts.items():
        part = time_interleaved({"ours": mine, "floor": reference}, 3 * repeats)
        rows.append(timing_row(NAME, name, "one t (0.5), same data", part["ours"], part["floor"], None))
    return rows, {"batch": batch, "bonafide": bonafide, "t": ts, "repeats": repeats}


def main() -> None:
    try:
        import mcrobust.analysis.evaluation  # noqa: F401
    except ImportError as error:
        print(f"skipped: mcrobust.analysis.evaluation.PointEvaluator is not importable yet ({error})")
        return
    run_main(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
