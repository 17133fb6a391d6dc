"""One-model repair on digits: which second end removes a backdoor that fine-tuning keeps, and which t to export.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/one_model_study.py --out lightning_logs/one_model_study

For each tampered third-party model (tests/user_models.py: a SoftmaxNet trained by plain torch on poisoned digits,
varying seed, poisoning rate and trigger) and each second-end recipe (`mcrobust.pipeline.second_end`), it runs
`mcrobust.repair` with ONE model on 300 clean training digits (270 bonafide-train, 30 holdout), evaluates on the
360 test digits, and records the whole path (clean accuracy, ASR and holdout accuracy at every t), the second end
alone (t = 1: the purification baseline of that recipe at the same budget), the choice of t by several trigger-free
rules, and the distance signals of every point from the model. Writes `<tag>.json` and `<tag>.md` in --out.

The ablations of docs/one_model.md:

    scripts/one_model_study.py --tag lr002 --recipes superfinetune_lr0.02
    scripts/one_model_study.py --tag augmentation --models patch-r20-s1 checker-r10-s2 blend-r10-s5 \
        --recipes superfinetune_noaug superfinetune+augpath
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcrobust.threats.triggers import BlendTrigger, PatchTrigger, Trigger  # noqa: E402
from scripts.one_model_tables import write_tables  # noqa: E402
from tests.user_models import SoftmaxNet, digits, train_backdoored  # noqa: E402

FOREIGN = {"normalize": "0.5,0.5", "output": "probabilities"}
BUDGET = {"epochs": 30, "epoch_samples": 320, "batch_size": 32, "path_lr": 0.05, "finetune_lr": 0.05}
CLEAN_IMAGES = 300
TARGET = 1


@dataclass(frozen=True)
class Tampered:
    """One tampered model of the study: how it was trained."""

    name: str
    seed: int
    rate: float
    trigger: Callable[[], Trigger]
    described: str


MODELS = (
    Tampered("patch-r20-s1", 1, 0.2, PatchTrigger, "3x3 white patch"),
    Tampered("checker-r10-s2", 2, 0.1, lambda: PatchTrigger(pattern="checkerboard"), "3x3 black/white pattern"),
    Tampered("blend-r20-s3", 3, 0.2, lambda: BlendTrigger(alpha=0.2), "noise blend, alpha 0.2"),
    Tampered("patch-r10-s4", 4, 0.1, PatchTrigger, "3x3 white patch"),
    Tampered("blend-r10-s5", 5, 0.1, lambda: BlendTrigger(alpha=0.2), "noise blend, alpha 0.2"),
)

VARIANTS: dict[str, dict[str, Any]] = {
    "finetune": {"second_end": "finetune"},
    "superfinetune": {"second_end": "superfinetune"},
    "reinit_head": {"second_end": "reinit_head"},
    "fst": {"second_end": "fst"},
    "scratch": {"second_end": "scratch"},
    "unlearn": {"second_end": "unlearn", "unlearn_suspect": False, "unlearn_eps": 3.0},
    "unlearn_suspect": {"second_end": "unlearn", "unlearn_suspect": True, "unlearn_eps": 3.0},
    "unlearn_suspect_r15": {"second_end": "unlearn", "unlearn_suspect": True, "unlearn_eps": 1.5},
    "unlearn_suspect_auto": {"second_end": "unlearn", "unlearn_suspect": True, "unlearn_eps": "auto"},
    "superfinetune_lr0.02": {"second_end": "superfinetune", "superfinetune_lr": 0.02},
    "superfinetune_noaug": {"second_end": "superfinetune", "augment": False},
    "superfinetune+augpath": {"second_end": "superfinetune", "path_augment": True},
}
"""Recipe name -> ChainSettings of the one-model repair (unlearning names its radius: 3, 1.5, or 'auto')."""
RECIPES = ("finetune", "superfinetune", "reinit_head", "fst", "scratch")
"""The recipes a plain run measures (augmenting the path hurt every path on digits: see docs/one_model.md)."""


def tensors(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC arrays as the (images in [0,1] NCHW, labels) pair `mcrobust.repair` accepts."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(labels)


def point_signals(folder: Path, clean: tuple[torch.Tensor, torch.Tensor], settings: Any) -> dict[float, dict]:
    """The distance signals of every evaluated t of a finished repair in `folder` (t = 1: the second end as given)."""
    from mcrobust.analysis.distance import distance_signals
    from mcrobust.nets.adapters import adapt_net
    from mcrobust.paths.batchnorm import recompute_bn
    from mcrobust.pipeline.chain import repair_data
    from mcrobust.pipeline.inputs import as_split
    from mcrobust.systems import CurveSystem

    data = repair_data(as_split(clean, "clean"), None, settings)
    data.setup("test")
    holdout = data.eval_dataloader(data.bonafide_dataset("holdout"))
    system = CurveSystem(adapt_net(SoftmaxNet(), **FOREIGN), kind=settings.kind, num_bends=settings.num_bends)
    system.load_state_dict(torch.load(folder / "steps" / "path" / "final.ckpt", weights_only=False)["state_dict"])
    curve, signals = system.curve, {}
    model = curve.endpoint(0)
    for t in [i / (settings.num_points - 1) for i in range(settings.num_points)]:
        t = round(t, 6)
        if t in (0.0, 1.0):
            point = curve.endpoint(int(t))
        else:
            point = curve.materialize(t)
            recompute_bn(point, data.bn_dataloader("bonafide"))
        signals[t] = distance_signals(model, point, holdout)
    return signals


def one_repair(model: Tampered, path: Path, variant: str, clean: Any, evaluation: Any, out: Path) -> dict[str, Any]:
    """Repair `path` with one recipe; the path table, the signals of every t, and the seconds it took."""
    import mcrobust
    from mcrobust.pipeline.settings import ChainSettings

    folder = out / model.name / variant
    chain = {**BUDGET, **VARIANTS[variant]}
    started = time.perf_counter()
    result = mcrobust.repair(
        path,
        clean,
        net=SoftmaxNet(),
        trigger=model.trigger(),
        target=TARGET,
        eval=evaluation,
        out=folder,
        progress=False,
        **FOREIGN,
        **chain,
    )
    seconds = time.perf_counter() - started
    settings = ChainSettings(**chain)
    signals = point_signals(folder, clean, settings)
    rows = [{**row, **signals[round(row["t"], 6)]} for row in result.table]
    return {
        "model": model.name,
        "recipe": variant,
        "seconds": round(seconds, 1),
        "chosen_t": result.t,
        "rule": result.summary.get("rule"),
        "warnings": result.warnings,
        "rows": rows,
    }


def train_tampered(path: Path, model: Tampered, overlap: bool) -> Path:
    """The third party's training (tests/user_models.py), on every training digit or on all but the clean ones.

    With `overlap` the user's clean images were part of the attacker's (poisoned) training set, as in
    tests/test_api.py; without it they are images the attacker never saw, as the paper's bonafide test half.
    """
    if overlap:
        return train_backdoored(path, seed=model.seed, trigger=model.trigger(), rate=model.rate)
    from mcrobust.threats.backdoor import poison

    images, labels = digits("train")
    poisoned = poison(images[CLEAN_IMAGES:], labels[CLEAN_IMAGES:], model.trigger(), TARGET, model.rate, seed=0)
    x, y = tensors(poisoned.images, poisoned.labels)
    torch.manual_seed(model.seed)
    net = SoftmaxNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(25):
        net.train()
        for batch in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.nll_loss(torch.log(net((x[batch] - 0.5) / 0.5) + 1e-12), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.save({"net": net.state_dict()}, path)
    return path


def train_models(out: Path, overlap: bool) -> dict[str, dict[str, Any]]:
    """Train (or reuse) every tampered model; record its test accuracy, ASR and the seconds it took."""
    import mcrobust

    test_x, test_y = digits("test")
    trained = {}
    for model in MODELS:
        path = out / "models" / f"{model.name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if not path.is_file():
            train_tampered(path, model, overlap)
        seconds = time.perf_counter() - started
        report = mcrobust.evaluate(
            path, tensors(test_x, test_y), net=SoftmaxNet(), trigger=model.trigger(), target=TARGET, **FOREIGN
        )
        trained[model.name] = {"path": str(path), "seconds": round(seconds, 1), **report, "trigger": model.described}
        trained[model.name] |= {"rate": model.rate, "seed": model.seed}
    return trained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lightning_logs/one_model_study", help="output folder (resumes there)")
    parser.add_argument("--models", nargs="*", default=[m.name for m in MODELS], help="tampered models to repair")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(VARIANTS), help="recipes")
    parser.add_argument("--tag", default="study", help="name of the JSON and Markdown files written in --out")
    parser.add_argument(
        "--overlap", action="store_true", help="the clean images were in the attacker's training set (test_api.py)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    started = time.perf_counter()
    x, y = digits("train")
    test_x, test_y = digits("test")
    clean, evaluation = tensors(x[:CLEAN_IMAGES], y[:CLEAN_IMAGES]), tensors(test_x, test_y)
    trained = train_models(out, args.overlap)
    runs = []
    for model in (m for m in MODELS if m.name in args.models):
        for variant in args.recipes:
            runs.append(one_repair(model, Path(trained[model.name]["path"]), variant, clean, evaluation, out))
            row = {r["t"]: r for r in runs[-1]["rows"]}[runs[-1]["chosen_t"]]
            print(
                f"{model.name:16s} {variant:22s} t={runs[-1]['chosen_t']:.1f} clean {row['clean_acc']:.3f} "
                f"asr {row['asr']:.3f} ({runs[-1]['seconds']:.0f} s)",
                flush=True,
            )
    total = time.perf_counter() - started
    study = {
        "budget": BUDGET,
        "clean_images": CLEAN_IMAGES,
        "overlap": args.overlap,
        "models": trained,
        "runs": runs,
        "seconds": total,
    }
    (out / f"{args.tag}.json").write_text(json.dumps(study, indent=1))
    write_tables(study, out / f"{args.tag}.md")
    print(f"study: {len(runs)} repairs in {total:.0f} s; {out / args.tag}.json and .md")


if __name__ == "__main__":
    main()
