"""Run one of the paper's experiments end to end through `mcrobust` commands (a GPU box, a SLURM node, or a CPU).

    python scripts/run_suite.py backdoor   --dataset cifar10 --net vgg16 --overlay configs/overlays/gpu.yaml
    python scripts/run_suite.py single     --dataset cifar10 --net vgg16 --sizes 2500
    python scripts/run_suite.py injection  --dataset cifar10 --net vgg16
    python scripts/run_suite.py robustness --overlay configs/overlays/ddp.yaml
    python scripts/run_suite.py adaptive
Every step is one `mcrobust fit|test --config configs/experiments/<kind>_<dataset>_<net>.yaml ...` command, so
the configs hold the settings and this script only chains the runs (checkpoints of one step are the inputs of the
next). Each runs as its own `python -m mcrobust` process: a DDP overlay starts its workers by re-running the
command, and `--launcher srun` wraps it. Each chain ends with its comparison table
(`python -m mcrobust.analysis.report`); `--dry-run` prints the commands only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (2500, 1000, 500, 250, 50)
BASELINES = ("finetune", "scratch", "noisy", "fineprune")
Step = list[list[str]]
"""Commands that do not depend on each other (they may run at once); the next step needs all of them."""


class Suite:
    """Builds the command chain of one experiment from the experiment configs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.logs = Path(args.logs)
        self.overlays = [item for overlay in args.overlay for item in ("--config", overlay)]
        self.setting = f"{args.dataset}_{args.net}"

    def config(self, name: str) -> str:
        path = ROOT / "configs" / "experiments" / f"{name}.yaml"
        if not path.is_file():
            raise SystemExit(f"mcrobust: error: no config {path.relative_to(ROOT)} for this dataset/net")
        return str(path.relative_to(ROOT))

    def mcrobust(self, subcommand: str, name: str, version: str, *extra: str) -> list[str]:
        """`mcrobust <subcommand> --config <name>.yaml <overlays>`, logging to <logs>/<name>/<version>."""
        logger = ["--trainer.logger.init_args.save_dir", str(self.logs), "--trainer.logger.init_args.version", version]
        launcher = shlex.split(self.args.launcher)
        config = ["--config", self.config(name), *self.overlays]
        return [*launcher, sys.executable, "-m", "mcrobust", subcommand, *config, *logger, *self.args.extra, *extra]

    def ckpt(self, name: str, version: str) -> str:
        return str(self.logs / name / version / "checkpoints" / "last.ckpt")

    def report(self, runs: list[str], out: str) -> Step:
        return [[sys.executable, "-m", "mcrobust.analysis.report", *runs, "--out", str(self.logs / "comparison" / out)]]

    def endpoints(self, kind: str) -> Iterator[Step]:
        """Two tampered endpoints A and B (seeds 1 and 2), independent of each other."""
        name, extra = f"{kind}_{self.setting}", self.args.endpoint_extra
        yield [
            self.mcrobust("fit", name, v, "--seed_everything", str(seed), *extra) for seed, v in ((1, "a"), (2, "b"))
        ]

    def repair(self, size: int, start: str, end: str, version: str) -> Iterator[Step]:
        """Path at bonafide size N, its evaluation, then every baseline on the same subset, then the table."""
        name = f"repair_{self.setting}"
        sizes = ["--data.bonafide.size", str(size), "--data.bonafide.holdout_size", str(max(10, size // 10))]
        ends = ["--model.init_args.start", start, "--model.init_args.end", end]
        yield [self.mcrobust("fit", name, version, *ends, *sizes)]
        yield [self.mcrobust("test", name, f"{version}_test", "--ckpt_path", self.ckpt(name, version), *sizes)]
        indices = ["--data.bonafide.indices_path", str(self.logs / name / version / "bonafide_indices.json")]
        runs = [str(self.logs / name / f"{version}_test")]
        for baseline in self.args.baselines:
            base, base_version = f"baseline_{baseline}_{self.setting}", f"{baseline}_{version}"
            weights = ends if baseline == "noisy" else ["--model.init_args.init_weights", start]
            if baseline != "noisy":
                weights = weights if baseline != "scratch" else []
                yield [self.mcrobust("fit", base, base_version, *weights, *indices)]
                weights = ["--ckpt_path", self.ckpt(base, base_version)]
            yield [self.mcrobust("test", base, f"{base_version}_test", *weights, *indices)]
            runs.append(str(self.logs / base / f"{base_version}_test"))
        yield self.report(runs, f"{self.setting}_{version}")

    def backdoor(self) -> Iterator[Step]:
        yield from self.endpoints("backdoor")
        name = f"backdoor_{self.setting}"
        for size in self.args.sizes:
            yield from self.repair(size, self.ckpt(name, "a"), self.ckpt(name, "b"), f"path_n{size}")

    def single(self) -> Iterator[Step]:
        """One tampered model: fine-tune it on the bonafide data, then connect it with its fine-tuned copy."""
        name, finetune = f"backdoor_{self.setting}", f"baseline_finetune_{self.setting}"
        yield [self.mcrobust("fit", name, "a", "--seed_everything", "1", *self.args.endpoint_extra)]
        for size in self.args.sizes:
            weights = ["--model.init_args.init_weights", self.ckpt(name, "a"), "--data.bonafide.size", str(size)]
            yield [self.mcrobust("fit", finetune, f"single_n{size}", *weights)]
            second = self.ckpt(finetune, f"single_n{size}")
            yield from self.repair(size, self.ckpt(name, "a"), second, f"single_path_n{size}")

    def injection(self) -> Iterator[Step]:
        endpoint, injection = f"endpoint_{self.setting}", f"injection_{self.setting}"
        yield from self.endpoints("endpoint")
        for seed, version in ((1, "a"), (2, "b")):
            weights = ["--model.init_args.weights", self.ckpt(endpoint, version), "--model.init_args.seed", str(seed)]
            # the paper injects the SAME S images into both endpoints: B reuses A's target and keep sets
            sets = ["--model.init_args.sets", str(self.logs / injection / "a" / "injection_sets.pt")]
            yield [self.mcrobust("fit", injection, version, *weights, *(sets if version == "b" else []))]
        name = f"repair_injection_{self.setting}"
        yield [self.mcrobust("fit", name, "path")]
        yield [self.mcrobust("test", name, "path_test", "--ckpt_path", self.ckpt(name, "path"))]
        yield self.report([str(self.logs / name / "path_test")], f"injection_{self.setting}")

    def robustness(self) -> Iterator[Step]:
        regular = self.mcrobust("fit", "endpoint_cifar10_vgg16", "a", "--seed_everything", "1")
        yield [regular, self.mcrobust("fit", "adversarial_cifar10_vgg16", "robust")]
        name = "robustness_path_cifar10_vgg16"
        yield [self.mcrobust("fit", name, "regular_robust")]
        yield [self.mcrobust("test", name, "regular_robust_test", "--ckpt_path", self.ckpt(name, "regular_robust"))]

    def adaptive(self) -> Iterator[Step]:
        yield [[sys.executable, str(ROOT / "scripts" / "adaptive_attack.py"), "--out", str(self.logs / "adaptive")]]


def run_step(step: Step, parallel: bool, dry_run: bool) -> None:
    """Run a step's commands, at once when `parallel` (each with its share of the cores), else one by one."""
    for command in step:
        print("$ " + shlex.join(command), flush=True)
    if dry_run:
        return
    if not parallel or len(step) == 1:
        for command in step:
            subprocess.run(command, cwd=ROOT, check=True)
        return
    threads = str(max(1, (os.cpu_count() or 1) // len(step)))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    running = [(command, subprocess.Popen(command, cwd=ROOT, env=env)) for command in step]
    failed = [command for command, process in running if process.wait() != 0]
    if failed:
        raise SystemExit(f"mcrobust: error: step failed: {shlex.join(failed[0])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("backdoor", "single", "injection", "robustness", "adaptive"))
    parser.add_argument("--dataset", default="cifar10", help="cifar10, svhn, digits or cifar10jpeg")
    parser.add_argument(
        "--net", default="vgg16", help="vgg16, preresnet26 (tiny for digits, preresnet20_cpu for JPEGs)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="bonafide sizes N")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES, help="after each path")
    parser.add_argument("--overlay", action="append", default=[], help="hardware config(s): configs/overlays/gpu.yaml")
    parser.add_argument("--logs", default="lightning_logs", help="where every run's folder goes")
    parser.add_argument("--extra", type=shlex.split, default=[], help="flags for every mcrobust command")
    parser.add_argument("--endpoint-extra", type=shlex.split, default=[], help="flags for the endpoints' commands")
    parser.add_argument("--parallel", action="store_true", help="run independent commands (endpoints A, B) at once")
    parser.add_argument("--launcher", default="", help="prefix for each mcrobust call, e.g. 'srun'")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    for step in getattr(Suite(args), args.experiment)():
        run_step(step, args.parallel, args.dry_run)


if __name__ == "__main__":
    main()
