"""`mcrobust repair`: check and repair a model you were handed, in one command and one process.

    mcrobust repair --model suspicious.pt --net my_pkg.MyNet --clean clean_images/ --out repaired/

The arguments map one to one onto `mcrobust.repair()`, which does the work; this module only parses them (without
importing Lightning, so `--help` is instant), prints the result, and turns user errors into one line.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from mcrobust.errors import MCRobustError, debugging, fail

OUTPUTS = ("logits", "probabilities", "log_probabilities")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as every mcrobust user error
        fail(f"{message} (see mcrobust repair --help)")


def parser() -> argparse.ArgumentParser:
    """The command line of `mcrobust repair`."""
    p = _Parser(
        prog="mcrobust repair",
        description="Repair a possibly backdoored model with a path in weight space trained on clean images only; "
        "t is chosen on clean held-out images, never with the trigger.",
    )
    p.add_argument("--model", required=True, help="the suspicious model: a checkpoint (.pt/.pth/.ckpt/.safetensors)")
    p.add_argument("--second", help="a second, independently trained model of the same architecture (optional)")
    p.add_argument("--net", required=True, help="architecture: a registered name, my_pkg.MyNet or torchvision.models.x")
    p.add_argument("--net-args", default=None, help="constructor arguments as JSON, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--clean", required=True, help="clean labelled images: a folder with one sub-folder per class")
    p.add_argument("--eval", default=None, help="separate labelled images for the reported metrics (default: holdout)")
    p.add_argument(
        "--trigger", default=None, help="YAML shaped like data.poison (trigger: class_path/init_args, target:)"
    )
    p.add_argument("--normalize", default=None, help="input statistics the model expects: MEAN,STD | imagenet | JSON")
    p.add_argument("--output", default="logits", choices=OUTPUTS, help="what the model returns (default: logits)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each training stage (default: the paper's 100)")
    p.add_argument("--epoch-samples", type=int, default=10_000, help="samples per epoch (the paper: 10000)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (the paper: 128)")
    p.add_argument("--path-lr", type=float, default=0.01, help="SGD learning rate of the path (the paper: 0.01)")
    p.add_argument("--finetune-lr", type=float, default=0.015, help="SGD lr of the fine-tuned copy (the paper: 0.015)")
    p.add_argument(
        "--second-end",
        default=None,
        help="one model: how the second end is trained: unlearn (default), superfinetune, finetune (the paper's), "
        "reinit_head, fst or scratch (docs/one_model.md)",
    )
    p.add_argument(
        "--unlearn-suspect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="unlearn also the targeted universal perturbation toward the class it reaches most easily (the default "
        "with --second-end unlearn; 2x the cost of plain unlearning)",
    )
    p.add_argument(
        "--unlearn-eps",
        type=number_or_auto,
        default=None,
        help="L2 radius, in pixel units, of the universal perturbations unlearning trains against and the suspect "
        "scan searches, or auto (default): the largest of 3, 2, 1.5, 1 (times the root of the pixel count over "
        "32x32) at which the model's median class reach in that scan is at most 0.6; a number fixes it (scale it "
        "with the square root of the pixel count; docs/results.md)",
    )
    p.add_argument(
        "--unlearn-eps-final",
        type=float,
        default=None,
        help="shrink the unlearning radius linearly, epoch by epoch, from --unlearn-eps to this at the last epoch "
        "(the scan keeps --unlearn-eps); default: no schedule",
    )
    p.add_argument(
        "--path-distill",
        type=number_or_auto,
        default=None,
        help="weight of a distillation term in the path's loss: every point also learns the two ends' mean "
        "predictions on the clean images; 0 is the paper's objective; auto (default): 4 with --second, 0 with one "
        "model (docs/repair.md)",
    )
    p.add_argument(
        "--selection",
        default="auto",
        choices=("auto", "middle", "far", "scan", "veto"),
        help="which t within the holdout tolerance is exported: middle (closest to 0.5, the paper's), far (farthest "
        "from the model; docs/one_model.md), scan (nearest the model where a trigger-free scan no longer finds the "
        "model's suspect class), veto (the middle point, moved away from the model while that scan still finds the "
        "suspect), or auto (default: veto with one model, middle with two)",
    )
    p.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the training and the evaluation")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    p.add_argument("--out", required=True, help="output folder; a killed run resumes there")
    return p


def number_or_auto(text: str) -> float | str:
    """--unlearn-eps, --path-distill: a number, or 'auto'."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """Parse, repair, print the table and the chosen point; user errors -> one line, exit 2."""
    args = parser().parse_args(argv)
    try:
        result = _run(args)
    except MCRobustError as error:
        if debugging():
            raise
        fail(str(error).splitlines()[0])
    metrics = result.record["metrics"]
    shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key in ("clean_acc", "asr", "ra"))
    print(f"\nrepaired: t = {result.t} ({shown}); files in {result.folder}")
    for warning in result.warnings:
        print(f"warning: {warning}")


def _run(args: argparse.Namespace) -> Any:
    from mcrobust.api import repair
    from mcrobust.pipeline.inputs import build_net

    net = build_net(args.net, args.net_args)
    # every other option is a keyword of mcrobust.repair (or of ChainSettings) under the same name
    options = {key: value for key, value in vars(args).items() if key not in ("model", "clean", "net", "net_args")}
    for unset in ("second_end", "unlearn_suspect", "unlearn_eps", "unlearn_eps_final", "path_distill"):
        if options.get(unset) is None:
            options.pop(unset, None)  # the chain's default
    return repair(args.model, args.clean, net=net, **options)
