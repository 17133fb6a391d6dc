"""The `mcrobust` command (and `python -m mcrobust`): `repair`, or Lightning's fit / validate / test / predict.

The dispatch imports nothing heavy: `mcrobust --help`, `--version` and `mcrobust repair --help` answer without
loading Lightning (a few seconds of imports), which only the subcommands that run something pay for.
"""

from __future__ import annotations

import sys

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
HELP = """usage: mcrobust [-h] [--version] {repair,fit,validate,test,predict} ...

Mode connectivity to repair tampered networks and to study adversarial robustness.

subcommands:
  repair     check and repair a model you were handed, in one command (mcrobust repair --help)
  fit        train a system from a config: endpoints, paths, baselines (mcrobust fit --help)
  validate   validate a system from a config
  test       evaluate a system from a config: endpoint metrics, or a whole path and its export
  predict    run a system's predictions

Systems (model.class_path): mcrobust.systems.EndpointSystem, AdversarialSystem, InjectionSystem, CurveSystem,
  NoisySystem, FinePruningSystem. Callbacks: mcrobust.callbacks.PathEvaluation, ExportPoint, Speedups.
Configs: configs/experiments/*.yaml (mcrobust fit --config FILE --print_config shows every setting).
User errors print one line `mcrobust: error: ...` (exit 2); MCROBUST_DEBUG=1 shows the traceback.
"""


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
        from mcrobust.repair_command import main as repair_main

        repair_main(argv[1:])
        return
    from mcrobust.cli import main as lightning_main

    lightning_main(argv)


if __name__ == "__main__":
    main()
