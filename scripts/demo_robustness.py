"""`make demo-robustness`: the robustness landscape between a regular and a PGD-AT digits net (the paper's study).

A path trained with the standard loss; along it the PGD robustness loss and the per-sample input-Hessian top
eigenvalue, at several attack radii (`--path_evaluation.evaluator.attack.eps`: one setting of the path evaluation,
the rest from configs/experiments/robustness_path_digits_tiny.yaml). Prints, per radius, the Pearson correlation
(with its bootstrap interval), Spearman's rho and the interior barrier of the robustness loss. The settings are fixed
in the configs; they are not tuned to produce a barrier: the numbers are what the data show. Every step is an `mcrobust`
command run in this process (scripts/demo.py's runner).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from demo import EXPERIMENTS, ROOT, mcrobust, quiet

RADII = (8, 16, 32)  # in 1/255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lightning_logs/demo_robustness", help="output folder (replaced)")
    parser.add_argument("--epochs", type=int, default=None, help="override the endpoints' epochs")
    args = parser.parse_args()
    quiet()
    out = (ROOT / args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    epochs = ["--trainer.max_epochs", str(args.epochs)] if args.epochs else []
    path_config = str(EXPERIMENTS / "robustness_path_digits_tiny.yaml")
    print("1/3 a regular and a PGD-AT (eps 32/255) tiny digits net")
    for config, name in (("endpoint_digits_tiny", "regular"), ("adversarial_digits_tiny", "robust")):
        mcrobust(["fit", "--config", str(EXPERIMENTS / f"{config}.yaml"), *epochs], out, name)
    a, b = (out / name / "checkpoints" / "last.ckpt" for name in ("regular", "robust"))
    print("2/3 a Bezier path between them, standard loss, full training split")
    mcrobust(
        ["fit", "--config", path_config, "--model.init_args.start", str(a), "--model.init_args.end", str(b)],
        out,
        "path",
    )
    print("3/3 robustness loss and input-Hessian top eigenvalue along the path, per PGD radius")
    results = []
    for radius in RADII:
        version, path = f"path_test_eps{radius}", str(out / "path" / "checkpoints" / "last.ckpt")
        attack = [
            "--path_evaluation.evaluator.attack.eps",
            str(radius / 255),
            "--path_evaluation.evaluator.attack.alpha",
            str(radius / 4 / 255),
        ]
        mcrobust(
            ["test", "--config", path_config, "--ckpt_path", path, *attack],
            out,
            version,
            show=("|",) if radius == RADII[-1] else (),
        )
        results.append((radius, json.loads((out / version / "path_summary.json").read_text())))
    print("\n| eps | Pearson r (robust loss, top eig) | 95% CI | Spearman | robust-loss barrier |")
    print("| --- | --- | --- | --- | --- |")
    for radius, summary in results:
        low, high = summary.get("pearson_ci95") or (None, None)
        interval = f"[{low:.2f}, {high:.2f}]" if low is not None and high is not None else "-"
        barrier = summary["barriers"].get("robust_loss")
        print(f"| {radius}/255 | {summary['pearson']:.3f} | {interval} | {summary['spearman']:.3f} | {barrier:+.3f} |")
    print(f"\nfinished in {time.perf_counter() - start:.0f} s; figures: {out}/path_test_eps*/path_figure.png")


if __name__ == "__main__":
    main()
