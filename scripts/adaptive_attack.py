"""The adaptive, path-aware attacker against path repair on digits (docs/adaptive_attack.md).

1. two backdoored endpoints (reused from `make demo` when present);
2. the attacker trains the straight segment between them on its poisoned data (both ends free) and hands the two
   ends to the defender (configs/experiments/adaptive_backdoor_digits_tiny.yaml);
3. the defender connects them with the usual repair config on bonafide data and evaluates the path.
Every step is an `mcrobust` command run in this process (scripts/demo.py's runner). Prints the defender's path
table; compare its ASR with the non-adaptive table of `make demo`.
"""

from __future__ import annotations

import argparse
import shutil
import time

from demo import EXPERIMENTS, ROOT, mcrobust, quiet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lightning_logs/adaptive", help="output folder (replaced)")
    parser.add_argument("--endpoints", default="lightning_logs/demo", help="folder with backdoor_a/b from make demo")
    args = parser.parse_args()
    quiet()
    out, endpoints = (ROOT / args.out).resolve(), (ROOT / args.endpoints).resolve()
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    backdoor, repair = str(EXPERIMENTS / "backdoor_digits_tiny.yaml"), str(EXPERIMENTS / "repair_digits_tiny.yaml")
    a, b = (endpoints / name / "checkpoints" / "last.ckpt" for name in ("backdoor_a", "backdoor_b"))
    if not (a.is_file() and b.is_file()):
        print("1/3 two backdoored endpoints")
        for seed, name in ((1, "backdoor_a"), (2, "backdoor_b")):
            mcrobust(["fit", "--config", backdoor, "--seed_everything", str(seed)], out, name)
        a, b = (out / name / "checkpoints" / "last.ckpt" for name in ("backdoor_a", "backdoor_b"))
    print("2/3 the attacker trains the segment between its two models on poisoned data")
    adaptive = str(EXPERIMENTS / "adaptive_backdoor_digits_tiny.yaml")
    ends = ["--model.init_args.start", str(a), "--model.init_args.end", str(b)]
    mcrobust(["fit", "--config", adaptive, *ends], out, "adaptive")
    adaptive_ends = ["--model.init_args.start", str(out / "adaptive" / "adaptive_a.pt")]
    adaptive_ends += ["--model.init_args.end", str(out / "adaptive" / "adaptive_b.pt")]
    print("3/3 the defender repairs the two adaptive models with bonafide data")
    mcrobust(["fit", "--config", repair, *adaptive_ends], out, "path")
    path = str(out / "path" / "checkpoints" / "last.ckpt")
    mcrobust(["test", "--config", repair, "--ckpt_path", path], out, "path_test", show=("|", "selected t"))
    print(f"finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
