"""The `mcrobust` command (and `python -m mcrobust`): `repair`, or Lightning's fit / validate / test / predict.

The dispatch imports nothing heavy: `mcrobust --help`, `--version` and `mcrobust repair --help` answer without
loading Lightning (a few seconds of imports), which only the subcommands that run something pay for.
"""

from __future__ import annotations

import os
import sys

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
SYSTEMS = ("EndpointSystem", "AdversarialSystem", "InjectionSystem", "CurveSystem", "NoisySystem", "FinePruningSystem")
"""The classes of mcrobust.systems a config names as `model.class_path` (a test keeps this list complete)."""
CALLBACKS = ("PathEvaluation", "NoisyEvaluation", "ExportPoint", "Speedups")
"""The classes of mcrobust.callbacks (a test keeps this list complete)."""
HELP = f"""usage: mcrobust [-h] [--version] {{repair,fit,validate,test,predict}} ...

Mode connectivity to repair tampered networks and to study adversarial robustness.

subcommands:
  repair     check and repair a model you were handed, in one command (mcrobust repair --help)
  fit        train a system from a config: endpoints, paths, baselines (mcrobust fit --help)
  validate   validate a system from a config
  test       evaluate a system from a config: endpoint metrics, or a whole path and its export
  predict    run a system's predictions

Systems (--model, i.e. model.class_path), mcrobust.systems.*:
  {", ".join(SYSTEMS)}
  (their settings: mcrobust fit --model.help CurveSystem)
Callbacks, mcrobust.callbacks.*: {", ".join(CALLBACKS)}
  PathEvaluation sits under `path_evaluation:` (one setting: --path_evaluation.num_points 3); add another
  callback with --trainer.callbacks+ mcrobust.callbacks.Speedups.
Configs: configs/experiments/*.yaml, composed from configs/parts/ (docs/configs.md). With --config FILE,
  --help shows its settings and --print_config the whole resolved config.
User errors print one line `mcrobust: error: ...` (exit 2); MCROBUST_DEBUG=1 shows the traceback.
"""


def keep_freed_memory() -> None:
    """glibc: keep freed blocks instead of returning them to the kernel every step (the Makefile's MALLOC_* settings).

    Measured: without it a curve step pays 5-15% in page faults and the batched pipeline ~470k faults per digits
    fit. Environment variables set by the user win; elsewhere than glibc this does nothing.
    """
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 17_179_869_184 // 16)  # M_TRIM_THRESHOLD (an int: 1 GiB)
        libc.mallopt(-3, 33_554_432)  # M_MMAP_THRESHOLD: 32 MiB
    except (OSError, AttributeError):
        return


def main(args: list[str] | None = None) -> None:
    """Entry point of the `mcrobust` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, end="")
        return
    if argv[0] == "--version":
        from mcrobust import __version__

        print(f"mcrobust {__version__}")
        return
    if argv[0] == "repair":
        from mcrobust.commands.repair import main as repair_main

        keep_freed_memory()

        repair_main(argv[1:])
        return
    keep_freed_memory()
    from mcrobust.cli import main as lightning_main

    lightning_main(argv)


if __name__ == "__main__":
    main()
