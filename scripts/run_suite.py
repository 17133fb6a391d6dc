"""Run one of the paper's experiments end to end through the `mcrobust` command (a GPU box or a SLURM node).

    python scripts/run_suite.py backdoor   --dataset cifar10 --net vgg16 --overlay configs/overlays/gpu.yaml
    python scripts/run_suite.py single     --dataset cifar10 --net vgg16 --sizes 2500
    python scripts/run_suite.py injection  --dataset cifar10 --net vgg16
    python scripts/run_suite.py robustness --overlay configs/overlays/ddp.yaml
    python scripts/run_suite.py adaptive
Each run ends with its comparison table (`python -m mcrobust.report`). `--dry-run` prints the commands only.
Inside a SLURM allocation, prefix the mcrobust calls with srun by `--launcher "srun"`.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (2500, 1000, 500, 250, 50)
BASELINES = ("finetune", "scratch", "noisy", "fineprune")


class Suite:
    """Builds and runs the command chain of one experiment."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.logs = Path(args.logs)
        self.overlays = [item for overlay in args.overlay for item in ("--config", overlay)]

    def config(self, name: str) -> str:
        path = ROOT / "configs" / "experiments" / f"{name}.yaml"
        if not path.is_file():
            raise SystemExit(f"mcrobust: error: no config {path.relative_to(ROOT)} for this dataset/net")
        return str(path.relative_to(ROOT))

    def mcrobust(self, subcommand: str, config: str, version: str, *extra: str) -> list[str]:
        launcher = shlex.split(self.args.launcher)
        logger = ["--trainer.logger.init_args.save_dir", str(self.logs), "--trainer.logger.init_args.version", version]
        return [
            *launcher,
            sys.executable,
            "-m",
            "mcrobust",
            subcommand,
            "--config",
            config,
            *self.overlays,
            *logger,
            *extra,
        ]

    def ckpt(self, name: str, version: str) -> str:
        return str(self.logs / name / version / "checkpoints" / "last.ckpt")

    def endpoints(self, kind: str) -> Iterator[list[str]]:
        """Two tampered endpoints A and B (seeds 1 and 2)."""
        name = f"{kind}_{self.args.dataset}_{self.args.net}"
        for seed, version in ((1, "a"), (2, "b")):
            yield self.mcrobust("fit", self.config(name), version, "--seed_everything", str(seed))

    def repair(self, size: int, start: str, end: str, version: str) -> Iterator[list[str]]:
        """Path at bonafide size N, its evaluation, then every baseline on the same subset."""
        data, name = f"{self.args.dataset}_{self.args.net}", f"repair_{self.args.dataset}_{self.args.net}"
        holdout = str(max(10, size // 10))
        sizes = ["--data.bonafide_size", str(size), "--data.holdout_size", holdout]
        yield self.mcrobust(
            "fit", self.config(name), version, "--model.init_args.start", start, "--model.init_args.end", end, *sizes
        )
        yield self.mcrobust(
            "test", self.config(name), f"{version}_test", "--ckpt_path", self.ckpt(name, version), *sizes
        )
        indices = ["--data.bonafide_indices_path", str(self.logs / name / version / "bonafide_indices.json")]
        runs = [str(self.logs / name / f"{version}_test")]
        for baseline in BASELINES:
            config = self.config(f"baseline_{baseline}_{data}")
            base_name, base_version = f"baseline_{baseline}_{data}", f"{baseline}_{version}"
            weights = ["--model.init_args.start", start, "--model.init_args.end", end] if baseline == "noisy" else []
            if baseline in ("finetune", "fineprune"):
                weights = ["--model.init_args.init_weights", start]
            if baseline != "noisy":
                yield self.mcrobust("fit", config, base_version, *weights, *indices)
                weights = ["--ckpt_path", self.ckpt(base_name, base_version)]
            yield self.mcrobust("test", config, f"{base_version}_test", *weights, *indices)
            runs.append(str(self.logs / base_name / f"{base_version}_test"))
        out = str(self.logs / "comparison" / f"{data}_{version}")
        yield [sys.executable, "-m", "mcrobust.report", *runs, "--out", out]

    def backdoor(self) -> Iterator[list[str]]:
        yield from self.endpoints("backdoor")
        name = f"backdoor_{self.args.dataset}_{self.args.net}"
        for size in self.args.sizes:
            yield from self.repair(size, self.ckpt(name, "a"), self.ckpt(name, "b"), f"path_n{size}")

    def single(self) -> Iterator[list[str]]:
        """One tampered model: fine-tune it on the bonafide data, then connect it with its fine-tuned copy."""
        name, data = f"backdoor_{self.args.dataset}_{self.args.net}", f"{self.args.dataset}_{self.args.net}"
        yield self.mcrobust("fit", self.config(name), "a", "--seed_everything", "1")
        for size in self.args.sizes:
            finetune = f"baseline_finetune_{data}"
            yield self.mcrobust(
                "fit",
                self.config(finetune),
                f"single_n{size}",
                "--model.init_args.init_weights",
                self.ckpt(name, "a"),
                "--data.bonafide_size",
                str(size),
            )
            yield from self.repair(
                size, self.ckpt(name, "a"), self.ckpt(finetune, f"single_n{size}"), f"single_path_n{size}"
            )

    def injection(self) -> Iterator[list[str]]:
        data = f"{self.args.dataset}_{self.args.net}"
        for seed, version in ((1, "a"), (2, "b")):
            yield self.mcrobust("fit", self.config(f"endpoint_{data}"), version, "--seed_everything", str(seed))
            yield self.mcrobust(
                "fit",
                self.config(f"injection_{data}"),
                version,
                "--model.init_args.weights",
                self.ckpt(f"endpoint_{data}", version),
                "--model.init_args.seed",
                str(seed),
                # the paper injects the SAME S images into both endpoints: B reuses A's target and keep sets
                *(
                    ["--model.init_args.sets", str(self.logs / f"injection_{data}" / "a" / "injection_sets.pt")]
                    if version == "b"
                    else []
                ),
            )
        name = f"repair_injection_{data}"
        yield self.mcrobust("fit", self.config(name), "path")
        yield self.mcrobust("test", self.config(name), "path_test", "--ckpt_path", self.ckpt(name, "path"))
        yield [
            sys.executable,
            "-m",
            "mcrobust.report",
            str(self.logs / name / "path_test"),
            "--out",
            str(self.logs / "comparison" / f"injection_{data}"),
        ]

    def robustness(self) -> Iterator[list[str]]:
        yield self.mcrobust("fit", self.config("endpoint_cifar10_vgg16"), "a", "--seed_everything", "1")
        yield self.mcrobust("fit", self.config("adversarial_cifar10_vgg16"), "robust")
        name = "robustness_path_cifar10_vgg16"
        yield self.mcrobust("fit", self.config(name), "regular_robust")
        yield self.mcrobust(
            "test", self.config(name), "regular_robust_test", "--ckpt_path", self.ckpt(name, "regular_robust")
        )

    def adaptive(self) -> Iterator[list[str]]:
        yield [sys.executable, str(ROOT / "scripts" / "adaptive_attack.py"), "--out", str(self.logs / "adaptive")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("backdoor", "single", "injection", "robustness", "adaptive"))
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "svhn", "digits"))
    parser.add_argument("--net", default="vgg16", help="vgg16, preresnet26 (or tiny for digits)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="bonafide sizes N")
    parser.add_argument(
        "--overlay", action="append", default=[], help="hardware overlay(s), e.g. configs/overlays/gpu.yaml"
    )
    parser.add_argument("--logs", default="lightning_logs", help="where every run's folder goes")
    parser.add_argument("--launcher", default="", help="prefix for each mcrobust call, e.g. 'srun'")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    for command in getattr(Suite(args), args.experiment)():
        print("$ " + shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
