"""Per-sample input-Hessian power iteration: step cost, iterations to 1e-3 accuracy, batched vs per-sample loop.

1. One power-iteration step (a batched HVP on the retained first-order graph + Rayleigh-Ritz) over one
   forward+backward (``loss.backward()``, eval mode) of the same batch; goal <= 2.5x. The whole public call divided
   by the mean number of steps its samples needed (builds, rebuilds and finished rows included) is reported beside.
2. Iterations to 1e-3 relative accuracy: the Rayleigh quotient of every sample is recorded for R steps; the last
   one is the reference, and a sample needs s steps when its estimate stays within 1e-3 of it from step s on.
   The library's own stopping rule (change < tol=1e-3) is reported against the same reference.
3. `input_hessian_power_iteration` on N samples at once against a loop calling it on one sample at a time, with the
   same seed and dataset indices (so the same start vectors): max relative difference (goal <= 1e-4) and the time
   ratio loop / batched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from common import Row, digits, run_main, time_interleaved, timing_row, trained_tiny
from torch import Tensor, nn

from mcrobust.analysis.hessian import (
    _hessian_vector_product,
    _rayleigh_ritz,
    _start_blocks,
    input_hessian_power_iteration,
)
from mcrobust.nets import create_net

NAME = "hessian"
STEP_GOAL = 2.5
DIFF_GOAL = 1e-4
ACCURACY = 1e-3
SEED = 0


def forward_backward(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """The unit of cost: one forward and one ``loss.backward()`` of the batch (parameter gradients)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def step_rows(label: str, model: nn.Module, x: Tensor, y: Tensor, repeats: int) -> list[Row]:
    """Row 1: one step on the retained graph, and the public call per step it needed, against forward+backward."""
    model.eval()
    index = torch.arange(len(x))
    basis = _start_blocks(index, SEED, x[0].numel(), 1, x.dtype)
    mean_iterations: list[float] = []
    with torch.enable_grad():
        hvp = _hessian_vector_product(model, x, y, 1)

        def step() -> None:
            _rayleigh_ritz(basis, hvp(basis))

        def whole_call() -> None:
            result = input_hessian_power_iteration(model, x, y, iters=20, tol=ACCURACY, seed=SEED, index=index)
            mean_iterations.append(float(result.iterations.float().mean()))

        timings = time_interleaved(
            {"step": step, "fwd_bwd": lambda: forward_backward(model, x, y), "call": whole_call}, repeats
        )
    steps = mean_iterations[-1]
    call = timings["call"]
    call.seconds, call.cpu_seconds = [s / steps for s in call.seconds], [s / steps for s in call.cpu_seconds]
    sizes = f"batch {len(x)}"
    return [
        timing_row(NAME, f"{label} HVP step / fwd+bwd", sizes, timings["step"], timings["fwd_bwd"], STEP_GOAL),
        timing_row(
            NAME,
            f"{label} whole call per step / fwd+bwd",
            sizes + f", {steps:.1f} steps",
            timings["call"],
            timings["fwd_bwd"],
            None,
            note="input_hessian_power_iteration(iters=20, tol=1e-3) / mean steps per sample: graph builds, "
            "rebuilds and zero-vector rows of finished samples included",
        ),
    ]


def trajectory(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> Tensor:
    """Rayleigh quotient of every sample after each of `steps` power-iteration steps, [steps, N]."""
    model.eval()
    basis = _start_blocks(torch.arange(len(x)), SEED, x[0].numel(), 1, x.dtype)
    values = []
    with torch.enable_grad():
        hvp = _hessian_vector_product(model, x, y, 1)
        for _ in range(steps):
            ritz, basis = _rayleigh_ritz(basis, hvp(basis))
            values.append(ritz[:, 0].detach())
    return torch.stack(values)


def iteration_rows(label: str, model: nn.Module, x: Tensor, y: Tensor, steps: int) -> list[Row]:
    """Row 2: steps needed for 1e-3 relative accuracy, and the error of the library's tol=1e-3 stop.

    Only samples whose reference has settled (changed by at most ACCURACY / 10 over its last 10 steps) are judged;
    the others (a tiny gap between the top two eigenvalues) are counted apart.
    """
    path = trajectory(model, x, y, steps)
    reference = path[-1]
    scale = reference.abs().clamp_min(1e-30)
    within = (path - reference).abs() / scale <= ACCURACY
    # first step from which the estimate stays within: 1 + the last step outside
    needed = ((~within).float() * torch.arange(1, steps + 1).unsqueeze(1)).max(dim=0).values + 1
    settled = (path[-10:] - reference).abs().max(dim=0).values / scale <= ACCURACY / 10
    result = input_hessian_power_iteration(model, x, y, iters=steps, tol=ACCURACY, seed=SEED)
    stop_error = (result.values[:, 0] - reference).abs() / scale
    stop_iterations = result.iterations.float()
    sizes = f"{int(settled.sum())} of {len(x)} samples settled, reference = step {steps}"
    unsettled = f"{int((~settled).sum())} unsettled sample(s) left out"
    return [
        Row(
            NAME,
            f"{label} steps to 1e-3 accuracy: mean",
            sizes,
            float(needed[settled].mean()),
            unit="",
            note=f"max {int(needed[settled].max())}, median {float(needed[settled].median()):.0f}; {unsettled}",
            extra={"needed": needed.tolist(), "settled": settled.tolist(), "eigenvalue": reference.tolist()},
        ),
        Row(
            NAME,
            f"{label} tol=1e-3 stop: max rel. error",
            sizes,
            float(stop_error[settled].max()),
            unit="",
            note=f"library stop rule: {float(stop_iterations.mean()):.1f} steps on average (max "
            f"{int(stop_iterations.max())}), median rel. error {float(stop_error[settled].median()):.1e}; {unsettled}",
            extra={"iterations": result.iterations.tolist(), "rel_error": stop_error.tolist()},
        ),
    ]


def loop_rows(label: str, model: nn.Module, x: Tensor, y: Tensor, repeats: int) -> list[Row]:
    """Row 3: batched against a per-sample loop with the same start vectors (seed, indices)."""
    index = torch.arange(100, 100 + len(x))  # dataset indices, not positions: seeds the start vectors

    def batched() -> Any:
        return input_hessian_power_iteration(model, x, y, iters=20, tol=ACCURACY, seed=SEED, index=index)

    def loop() -> tuple[Tensor, Tensor]:
        results = [
            input_hessian_power_iteration(
                model, x[i : i + 1], y[i : i + 1], iters=20, tol=ACCURACY, seed=SEED, index=index[i : i + 1]
            )
            for i in range(len(x))
        ]
        return torch.cat([r.values for r in results]), torch.cat([r.iterations for r in results])

    one, (values, iterations) = batched(), loop()
    diff = ((one.values - values).abs() / values.abs().clamp_min(1e-30))[:, 0]
    same = one.iterations == iterations
    rows = [
        Row(
            NAME,
            f"{label} batched vs loop: max rel. diff",
            f"{len(x)} samples, iters 20, tol 1e-3",
            float(diff.max()),
            goal=DIFF_GOAL,
            unit="",
            note=f"{int((~same).sum())} of {len(x)} samples stopped at another step",
        ),
        Row(
            NAME,
            f"{label} batched vs loop, same step count: max rel. diff",
            f"{int(same.sum())} of {len(x)} samples",
            float(diff[same].max()) if bool(same.any()) else float("nan"),
            goal=DIFF_GOAL,
            unit="",
            note="round-off only: the samples whose stop rule fired at the same step in both",
        ),
    ]
    timings = time_interleaved({"loop": loop, "batched": batched}, repeats, warmup=0)
    rows.append(
        timing_row(
            NAME,
            f"{label} per-sample loop / batched",
            f"{len(x)} samples, iters 20, tol 1e-3",
            timings["loop"],
            timings["batched"],
            None,
            note="time ratio (higher: batching helps more); reported, no goal",
        )
    )
    return rows


def run(quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Trained TinyNet on digits and an untrained PreResNet-20 (eval mode)."""
    x_all, y_all, _ = digits("test")
    sizes = {  # batch for step timing, samples x steps for the trajectory, samples for the loop
        "tiny": (32, (32, 30), 8) if quick else (128, (128, 100), 32),
        "preresnet20": (32, (8, 20), 4) if quick else (128, (32, 30), 8),
    }
    repeats = 3 if quick else 7
    torch.manual_seed(0)
    models = {"tiny": trained_tiny(), "preresnet20": create_net("preresnet", depth=20).eval()}
    rows: list[Row] = []
    for label, model in models.items():
        batch, (samples, steps), loop_samples = sizes[label]
        rows += step_rows(label, model, x_all[:batch], y_all[:batch], repeats)
        rows += iteration_rows(label, model, x_all[:samples], y_all[:samples], steps)
        rows += loop_rows(label, model, x_all[:loop_samples], y_all[:loop_samples], 3)
    return rows, {"sizes": sizes, "repeats": repeats, "seed": SEED, "accuracy": ACCURACY}


def main() -> None:
    run_main(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
