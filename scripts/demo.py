"""`make demo`: repair a backdoored model on the embedded digits data through `mcrobust` commands, in one process.

Two backdoored endpoints -> a Bezier path trained on a small bonafide subset -> path evaluation at 11 t (clean
accuracy, ASR, PGD robust accuracy, input-Hessian top eigenvalue) with the repaired point chosen on held-out
bonafide data and exported -> the fine-tuning baseline on the same bonafide subset -> the comparison table.
Everything lands in lightning_logs/demo/ (TensorBoard: `tensorboard --logdir lightning_logs`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiments"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def quiet() -> None:
    """Keep Lightning's notes (GPU available, tips, seeds) and known-harmless warnings out of the demo's output."""
    warnings.filterwarnings("ignore")
    import pytorch_lightning  # noqa: F401 - its import sets its loggers to INFO: import first, then lower them

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def mcrobust(args: list[str], out: Path, version: str, show: tuple[str, ...] = ()) -> None:
    """Run one `mcrobust` command in this process (the stack is imported once), logging to out/<version>."""
    from mcrobust.cli import run_cli

    command = [*args, "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", ""]
    command += ["--trainer.logger.init_args.version", version, *QUIET]
    print(f"$ mcrobust {' '.join(a.replace(f'{ROOT}/', '') for a in args)}", flush=True)
    start = time.perf_counter()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            run_cli(command)
    except SystemExit as error:
        sys.stdout.write(captured.getvalue()[-4000:])
        raise SystemExit(f"demo step failed: mcrobust {' '.join(args)}") from error
    for line in captured.getvalue().splitlines():
        if show and line.startswith(show):
            print("  " + line)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lightning_logs/demo", help="output folder (replaced)")
    parser.add_argument("--endpoint-epochs", type=int, default=None, help="override the endpoints' epochs")
    parser.add_argument("--path-epochs", type=int, default=None, help="override the path's epochs")
    args = parser.parse_args()
    quiet()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    out = (ROOT / args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    backdoor, repair = str(EXPERIMENTS / "backdoor_digits_tiny.yaml"), str(EXPERIMENTS / "repair_digits_tiny.yaml")
    finetune = str(EXPERIMENTS / "baseline_finetune_digits_tiny.yaml")
    endpoint_epochs = ["--trainer.max_epochs", str(args.endpoint_epochs)] if args.endpoint_epochs else []
    path_epochs = ["--trainer.max_epochs", str(args.path_epochs)] if args.path_epochs else []

    print("1/5 two backdoored endpoints (10% of non-target digits carry a 3x3 patch, target label 1)")
    for seed, name in ((1, "backdoor_a"), (2, "backdoor_b")):
        mcrobust(["fit", "--config", backdoor, "--seed_everything", str(seed), *endpoint_epochs], out, name)
    a, b = (out / name / "checkpoints" / "last.ckpt" for name in ("backdoor_a", "backdoor_b"))
    print("2/5 a Bezier path between them, trained on the bonafide subset only")
    mcrobust(
        ["fit", "--config", repair, "--model.init_args.start", str(a), "--model.init_args.end", str(b), *path_epochs],
        out,
        "path",
    )
    print("3/5 evaluate 11 points, choose t on held-out bonafide data, export the repaired model")
    mcrobust(
        ["test", "--config", repair, "--ckpt_path", str(out / "path" / "checkpoints" / "last.ckpt")],
        out,
        "path_test",
        show=("|", "Path evaluation", "selected t", "ExportPoint"),
    )
    print("4/5 baseline: fine-tune backdoored model A on the same bonafide subset")
    indices = str(out / "path" / "bonafide_indices.json")
    mcrobust(
        [
            "fit",
            "--config",
            finetune,
            "--model.init_args.init_weights",
            str(a),
            "--data.bonafide.indices_path",
            indices,
        ],
        out,
        "finetune",
    )
    mcrobust(
        [
            "test",
            "--config",
            finetune,
            "--ckpt_path",
            str(out / "finetune" / "checkpoints" / "last.ckpt"),
            "--data.bonafide.indices_path",
            indices,
        ],
        out,
        "finetune_test",
    )
    print("5/5 comparison")
    from mcrobust.analysis.report import main as report

    report([str(out / "path_test"), str(out / "finetune_test"), "--out", str(out)])
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; figure: {out / 'path_test' / 'path_figure.png'}")
    print(f"TensorBoard: tensorboard --logdir {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
