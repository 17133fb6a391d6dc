"""The CIFAR-10 grid of tampered models and the one-model repair on each (docs/results.md, "CIFAR-10 grid").

    OMP_NUM_THREADS=1 .venv/bin/python scripts/cifar10_grid.py --data /path/to/cifar10-jpeg --out runs/cifar10_grid

`--data` holds the unzipped JPEGs (`train/<class>/*.jpg`, `test/<class>/*.jpg`). Every cell (architecture x
trigger x poisoning rate) is trained with mcrobust (EndpointSystem on RobustDataModule, the trigger stamped on
`rate` of every non-target class of the 50,000 training images, after crop and flip so that it stays where the
attacker put it) for a fixed budget of images, then repaired ONE
model at a time with `mcrobust.repair` on N bonafide images drawn from one half of the test split, and measured
on the other half:

* the paper's recipe (second end = fine-tuned copy; its t = 1 is plain fine-tuning at the same budget),
* super-fine-tuning (Sha et al. 2022; the previous default; its t = 1 is that purification on its own),
* Feature Shift Tuning (Min et al. 2023) on its own, the other published fine-tuning purification,
* adversarial unlearning (`second_end='unlearn'`; with `unlearn_suspect` and selection 'scan', the default of
  `mcrobust repair` chosen on this grid).

`--recipes` picks the second ends to run; the grid's first cells also have the path to the FST end, and
`--recipes unlearn_suspect` adds unlearning with `unlearn_suspect=True` (`repair_unlearn_suspect.json`), and
`unlearn_scan` / `unlearn_suspect_scan` choose t on those trained paths again with selection 'scan' (nothing is
retrained: they resume the recipe's folder; `repair_<recipe>_scan.json`). `unlearn_suspect_veto_r15` and
`unlearn_suspect_veto_r2` are the default at unlearning radius 1.5 and 2 instead of 3, `unlearn_suspect_veto_s3to15`
with the radius shrinking from 3 to 1.5 over the epochs (the table `radius_table`). `unlearn_suspect_veto_auto_kd4`
trains a distilled path on the unlearned end of the cell's default repair, without retraining it (`distill_table`).

Each finished step is a JSON file under `<out>/<cell>/`; a rerun skips it, so the grid can be stopped and
resumed, and split over processes with --worker k/n. `--table` prints the markdown tables of what has finished.
`--train-images` / `--train-epochs` train the tampered models longer; such a budget needs its own `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mcrobust  # noqa: E402
from mcrobust.analysis.suspect import SuspectScan  # noqa: E402
from mcrobust.data.bonafide import split_stratified  # noqa: E402
from mcrobust.data.sources import ArraySplit, load_image_folder  # noqa: E402
from mcrobust.errors import MCRobustError  # noqa: E402
from mcrobust.nets import create_net  # noqa: E402
from mcrobust.paths.selection import select_t  # noqa: E402
from mcrobust.pipeline.scan import RADIUS_LADDER, RADIUS_REACH_LIMIT  # noqa: E402
from mcrobust.threats.triggers import BlendTrigger, PatchTrigger  # noqa: E402

if TYPE_CHECKING:
    from mcrobust.pipeline.settings import ChainSettings

TARGET = 0
ARCHS = {"vgg_small_bn": {}, "preresnet20": {"depth": 20}, "wrn16_1": {"depth": 16, "widen": 1}}
REGISTERED = {"vgg_small_bn": "vgg_small_bn", "preresnet20": "preresnet", "wrn16_1": "wideresnet"}
TRIGGERS = {
    "patch": ("3x3 white square, bottom right", PatchTrigger),
    "checker": ("4x4 black/white pattern", lambda: PatchTrigger(size=4, pattern="checkerboard")),
    "blend": ("noise blend, alpha 0.1", lambda: BlendTrigger(alpha=0.1)),
}
RATES = (0.1, 0.2)
RECIPES = ("finetune", "superfinetune", "fst", "unlearn")
"""Second ends of the one-model repairs: the paper's, super-fine-tuning, FST, and adversarial unlearning."""
PLAIN = {"unlearn_suspect": False, "selection": "middle"}
"""The grid's first recipes as they ran: no suspect class, the paper's middle rule (the table reads 'far' off rows)."""
FIRST_RADIUS = {"unlearn_eps": 3.0}
"""The unlearning radius of every unlearning recipe of the grid before 2026-12-07 (the default, then and now)."""
RADII = {
    "r15": {"unlearn_eps": 1.5},
    "r2": {"unlearn_eps": 2.0},
    "s3to15": {"unlearn_eps_final": 1.5},
    "auto": {"unlearn_eps": "auto"},
}
"""The other unlearning radii tried on 2026-12-07 (`radius_table`), by the suffix of their recipe and folder: 1.5, 2,
the schedule from 3 at the first epoch to 1.5 at the last, and 'auto' (`mcrobust.pipeline.scan.resolve_radius`)."""
RECIPE_SETTINGS = {recipe: {"second_end": recipe, **PLAIN} for recipe in RECIPES} | {
    "unlearn": {"second_end": "unlearn", **PLAIN, **FIRST_RADIUS},
    "unlearn_suspect": {"second_end": "unlearn", "unlearn_suspect": True, "selection": "far", **FIRST_RADIUS},
    "unlearn_scan": {"second_end": "unlearn", "unlearn_suspect": False, "selection": "scan", **FIRST_RADIUS},
    "unlearn_suspect_scan": {"second_end": "unlearn", "unlearn_suspect": True, "selection": "scan", **FIRST_RADIUS},
    "unlearn_suspect_veto": {"second_end": "unlearn", "unlearn_suspect": True, "selection": "veto", **FIRST_RADIUS},
}
RECIPE_SETTINGS |= {
    f"unlearn_suspect_veto_{tag}": RECIPE_SETTINGS["unlearn_suspect_veto"] | radius for tag, radius in RADII.items()
}
"""`mcrobust.repair` settings of every recipe `--recipes` may name, as they ran: the default ones, `unlearn_suspect`,
both unlearning recipes with selection 'scan', the veto, and the veto at the other radii of `radius_table`
(`unlearn_suspect_veto_r15`, `unlearn_suspect_veto_r2`, `unlearn_suspect_veto_s3to15`)."""
DISTILLED = {"unlearn_suspect_veto_auto_kd4": {"path_distill": 4.0}}
"""The default one-model recipe with its path distilled from its two ends (weight 4, the two-model default of
2026-12-07), trained on the unlearned end of the cell's default repair (`seed_trained_end` copies it): the two paths
differ in their objective only (`distill_table`)."""
RECIPE_SETTINGS |= {name: RECIPE_SETTINGS["unlearn_suspect_veto_auto"] | extra for name, extra in DISTILLED.items()}
SHARED_FOLDER = {
    "unlearn_scan": "unlearn",
    "unlearn_suspect_scan": "unlearn_suspect",
    "unlearn_suspect_veto": "unlearn_suspect",
} | {f"unlearn_suspect_veto_{tag}": f"unlearn_suspect_{tag}" for tag in RADII}
"""Recipes that differ only in the choice of t resume the trained folder of their recipe (nothing is retrained)."""


@dataclass(frozen=True)
class Budget:
    """What one cell may spend: training images of the tampered model and of every repair stage."""

    train_images: int = 48_000
    train_epochs: int = 4
    bonafide: int = 2500
    repair_epochs: int = 4
    repair_epoch_samples: int = 2500
    eval_images: int = 2000
    num_points: int = 5


def cells() -> list[tuple[str, str, float]]:
    """The grid in the order it is run: every architecture and trigger at 10% before any at 20%."""
    return [(arch, trig, rate) for rate in RATES for trig in TRIGGERS for arch in ARCHS]


def cell_name(arch: str, trig: str, rate: float, replica: int = 0) -> str:
    """The cell's folder name; replica k > 0 (an independently trained model of the same cell) adds '-rep<k>'."""
    return f"{arch}-{trig}-r{round(rate * 100)}" + (f"-rep{replica}" if replica else "")


def load_data(root: Path, cache: Path) -> tuple[ArraySplit, ArraySplit]:
    """The 50,000 training and 10,000 test JPEGs in memory (decoded once, cached as .npz in `cache`)."""
    splits = []
    for name in ("train", "test"):
        file = cache / f"cifar10_jpeg_{name}.npz"
        if not file.is_file():
            split = load_image_folder(root, name)
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(file, images=split.images, labels=split.labels, classes=np.array(split.classes))
        stored = np.load(file)
        splits.append(ArraySplit(stored["images"], stored["labels"], tuple(str(c) for c in stored["classes"])))
    return splits[0], splits[1]


def tensors(split: ArraySplit, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) in [0, 1] and labels of `split[index]`, the form `mcrobust.repair` takes."""
    images = torch.from_numpy(split.images[index]).permute(0, 3, 1, 2).float() / 255.0
    return images, torch.from_numpy(split.labels[index]).long()


def halves(test: ArraySplit, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """The paper's protocol: bonafide images from one half of the test split, evaluation on the other half."""
    pool, evaluation = split_stratified(test.labels, 0.5, seed=0)
    bonafide = pool[split_stratified(test.labels[pool], budget.bonafide, seed=1)[0]]
    evaluated = evaluation[split_stratified(test.labels[evaluation], budget.eval_images, seed=2)[0]]
    return bonafide, evaluated


def timed(file: Path, step: Any) -> dict[str, Any]:
    """Run `step()` once: its JSON result is kept in `file` with the seconds it took."""
    if file.is_file():
        return json.loads(file.read_text())
    started = time.perf_counter()
    try:
        result = step()
    except MCRobustError as error:  # a diverged or refused stage is a finding of the grid, not the end of it
        result = {"failed": str(error)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(result, indent=1, default=float))
    return result


def train_tampered(
    arch: str,
    trig: str,
    rate: float,
    train: ArraySplit,
    test: ArraySplit,
    folder: Path,
    budget: Budget,
    replica: int = 0,
):
    """Train the cell's backdoored model with mcrobust; return its weights file.

    `replica` 1, 2, ... are independently trained copies (their own initialisation, data order and poisoned
    images) for the two-model protocol; replica 0 is the cell's model.
    """
    import pytorch_lightning as pl

    from mcrobust.data.datamodules import PoisonSettings, RobustDataModule
    from mcrobust.systems import EndpointSystem

    weights = folder / ("tampered.pt" if replica == 0 else f"tampered_{replica}.pt")
    if weights.is_file():
        return weights
    pl.seed_everything(hash_seed(arch, trig, rate, *([replica] if replica else [])), verbose=False)
    poison_seed = 1 + replica
    poison = PoisonSettings(
        trigger=TRIGGERS[trig][1](), target=TARGET, rate=rate, seed=poison_seed, after_augmentation=True
    )
    data = RobustDataModule(
        dataset="image_folder",
        batch_size=128,
        augment=True,
        poison=poison,
        epoch_samples=budget.train_images // budget.train_epochs,
    )
    data.given_splits = (train, test)
    system = EndpointSystem(
        create_net(REGISTERED[arch], **ARCHS[arch]),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=budget.train_epochs),
    )
    trainer = pl.Trainer(
        max_epochs=budget.train_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(system, datamodule=data)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(system.net.state_dict(), weights)
    return weights


def trained_on(budget: Budget) -> dict[str, int]:
    """What a tampered model was trained on; kept in its JSON so that another budget cannot reuse it unnoticed."""
    return {"train_images": budget.train_images, "train_epochs": budget.train_epochs}


def trained_images(record: dict[str, Any]) -> int:
    """The number of images a tampered model's JSON says it trained on (older records: the grid's default)."""
    return int(record.get("train_images", Budget.train_images))


def refuse_other_budget(record: Path, budget: Budget) -> None:
    """Stop when `record`, a tampered model's JSON, says it was trained on another number of images than `budget`.

    Records written before the budget was kept count as the grid's default budget.
    """
    if not record.is_file():
        return
    kept = trained_images(json.loads(record.read_text()))
    if kept != budget.train_images:
        raise SystemExit(
            f"--train-images: {record.parent.name} was trained on {kept:,} images, not {budget.train_images:,}; "
            "give this budget its own --out"
        )


def hash_seed(*parts: Any) -> int:
    """A stable seed per cell (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(repr(parts).encode()) % 10_000


def load_tampered(arch: str, weights: Path) -> torch.nn.Module:
    net = create_net(REGISTERED[arch], **ARCHS[arch])
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def repair_record(result: Any) -> dict[str, Any]:
    """What the grid keeps of a repair: the path table, the chosen t, its distance signals and warnings."""
    return {
        "t": result.t,
        "rows": result.table,
        "distance_from_model": result.record["distance_from_model"],
        "warnings": result.warnings,
        "rule": result.summary.get("rule"),
        "unlearn_eps": result.record["settings"]["unlearn_eps"],
    }


def fst_alone(net: torch.nn.Module, clean: Any, settings: dict[str, Any], folder: Path, evaluate: Any):
    """Feature Shift Tuning on its own (no path): the second end of `second_end='fst'`, evaluated."""
    return second_end_alone("fst", net, clean, settings, folder, evaluate)


def second_end_alone(
    recipe: str, net: torch.nn.Module, clean: Any, settings: dict[str, Any], folder: Path, evaluate: Any
) -> dict[str, Any]:
    """The second end of a one-model repair trained by `recipe` on its own (no path), evaluated."""
    from mcrobust.pipeline.chain import RepairChain, repair_data
    from mcrobust.pipeline.inputs import as_split
    from mcrobust.pipeline.settings import ChainSettings

    chain_settings = ChainSettings(second_end=recipe, **settings)
    data = repair_data(as_split(clean, "clean"), None, chain_settings)
    chain = RepairChain(net.cpu(), data, chain_settings, folder)
    end = chain.second_end(chain.save_endpoint("model", net))
    tuned = load_tampered_like(net, end)
    return evaluate(tuned)


def load_tampered_like(template: torch.nn.Module, weights: Path) -> torch.nn.Module:
    import copy

    from mcrobust.io.checkpoints import load_weights

    net = copy.deepcopy(template)
    net.load_state_dict(load_weights(str(weights), template=net))
    return net.eval()


def run_cell(
    arch: str,
    trig: str,
    rate: float,
    train: ArraySplit,
    test: ArraySplit,
    out: Path,
    budget: Budget,
    recipes: tuple[str, ...] = RECIPES,
    replica: int = 0,
    only_backdoored: bool = False,
):
    """Train the cell's model (replica k: an independently trained copy) and run its one-model repairs.

    With `only_backdoored`, recipes other than 'finetune' run only where fine-tuning at the paper's settings left
    ASR > 0.5 (the cells issue 14's one-model bar counts), so held-out cells spend no time on the others.
    """
    folder = out / cell_name(arch, trig, rate, replica)
    bonafide, evaluated = halves(test, budget)
    trigger = TRIGGERS[trig][1]()
    eval_set = tensors(test, evaluated)
    clean = tensors(test, bonafide)

    def evaluate(net: torch.nn.Module) -> dict[str, Any]:
        return mcrobust.evaluate(net, eval_set, trigger=trigger, target=TARGET)

    refuse_other_budget(folder / "tampered.json", budget)
    started = time.perf_counter()
    weights = train_tampered(arch, trig, rate, train, test, folder, budget, replica)
    facts = {"train_seconds": round(time.perf_counter() - started, 1), **trained_on(budget)}
    timed(folder / "tampered.json", lambda: {**facts, **evaluate(load_tampered(arch, weights))})
    settings = {
        "epochs": budget.repair_epochs,
        "epoch_samples": budget.repair_epoch_samples,
        "num_points": budget.num_points,
        "progress": False,
        "seed": 0,
    }
    for recipe in recipes:
        if only_backdoored and recipe != "finetune" and not finetuning_kept_backdoor(folder):
            continue
        if recipe in DISTILLED and not (folder / f"repair_{recipe}.json").is_file():
            seed_trained_end(folder, folder / recipe, DISTILLED[recipe])
        net = load_tampered(arch, weights)
        timed(
            folder / f"repair_{recipe}.json",
            lambda net=net, recipe=recipe: repair_record(
                mcrobust.repair(
                    net,
                    clean,
                    trigger=trigger,
                    target=TARGET,
                    eval=eval_set,
                    **RECIPE_SETTINGS[recipe],
                    out=folder / SHARED_FOLDER.get(recipe, recipe),
                    **settings,
                )
            ),
        )
    if only_backdoored and not finetuning_kept_backdoor(folder):
        return
    net = load_tampered(arch, weights)
    timed(folder / "fst.json", lambda: fst_alone(net, clean, settings, folder / "fst", evaluate))
    if (folder / "unlearn_suspect" / "steps" / "path" / "final.ckpt").is_file():
        net = load_tampered(arch, weights)
        timed(folder / "scan_study.json", lambda: scan_study(net, clean, settings, folder / "unlearn_suspect"))


def default_recipe(cell: Path) -> str | None:
    """The recipe of the cell's default one-model repair: 'unlearn_suspect_veto_auto' where it ran, else the
    fixed-radius veto that 'auto' resolves to on this model, which stood in for it (`radius_table`); None while
    neither has finished."""
    tag = RADIUS_TAGS.get(auto_radius(cell))
    fixed = [] if tag is None else ["unlearn_suspect_veto" if tag == "r3" else f"unlearn_suspect_veto_{tag}"]
    finished = (
        recipe
        for recipe in ["unlearn_suspect_veto_auto", *fixed]
        if (cell / f"repair_{recipe}.json").is_file()
        and (cell / SHARED_FOLDER[recipe] / "steps" / "finetuned.safetensors").is_file()
    )
    return next(finished, None)


def seed_trained_end(cell: Path, folder: Path, changed: dict[str, Any]) -> None:
    """Start the repair folder `folder` from the trained unlearned end (and cached radius) of the cell's default repair,
    its recorded settings changed by `changed`, so that `mcrobust.repair` resumes it and trains only the path."""
    steps = folder / "steps"
    if steps.is_dir():
        return
    recipe = default_recipe(cell)
    if recipe is None:
        raise SystemExit(f"{cell.name}: run --recipes unlearn_suspect_veto_auto first (its unlearned end is reused)")
    source = cell / SHARED_FOLDER[recipe]
    steps.mkdir(parents=True)
    for name in ("model.safetensors", "finetuned.safetensors"):
        shutil.copy2(source / "steps" / name, steps / name)
    radius = read_json(source / "steps" / "radius.json") or read_json(cell / "auto_radius.json")
    radius.pop("seconds", None)
    (steps / "radius.json").write_text(json.dumps(radius, indent=2))
    recorded = json.loads((source / "steps" / "chain_settings.json").read_text())
    (steps / "chain_settings.json").write_text(json.dumps(recorded | {"unlearn_eps": "auto"} | changed, indent=2))


STUDY_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Points of the suspect-class unlearning path the scan study scans (the grid's path grid)."""


def scan_study(net: torch.nn.Module, clean: Any, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The suspect scan of `mcrobust repair` at every point of the trained suspect-class unlearning path in `folder`.

    The same chain as the repair rebuilds the path from its checkpoint (same split, BN recomputed on the same images,
    the same holdout images scanned), so every selection rule can be replayed offline (`replayed_choices`) without a
    further path evaluation.
    """
    import copy

    from mcrobust.analysis.suspect import scan_classes
    from mcrobust.pipeline.chain import RepairChain, repair_data
    from mcrobust.pipeline.inputs import as_split
    from mcrobust.pipeline.scan import scan_images

    chain_settings = study_settings(settings)
    data = repair_data(as_split(clean, "clean"), None, chain_settings)
    data.setup("test")
    chain = RepairChain(copy.deepcopy(net).cpu(), data, chain_settings, folder)
    system = chain.curve_system()
    checkpoint = torch.load(folder / "steps" / "path" / "final.ckpt", map_location="cpu", weights_only=False)
    system.load_state_dict(checkpoint["state_dict"])
    x, y = scan_images(chain)
    eps, steps = chain_settings.unlearn_eps, chain_settings.unlearn_steps
    return {"reach": {str(t): list(scan_classes(chain.point(system, t), x, y, eps, steps).reach) for t in STUDY_POINTS}}


def study_settings(settings: dict[str, Any]) -> ChainSettings:
    """The settings of the 'unlearn_suspect' repair the scan study rebuilds, resolved for one model as
    `mcrobust.repair` resolves them (its path was trained with the paper's objective, `path_distill` 0)."""
    from mcrobust.pipeline.settings import ChainSettings

    chain_settings = ChainSettings(**RECIPE_SETTINGS["unlearn_suspect"], **settings)
    chain_settings.resolve_for(one_model=True)
    return chain_settings


def finetuning_kept_backdoor(folder: Path) -> bool:
    """Whether the paper's recipe (t = 1 of `repair_finetune.json`, run first) left ASR above 0.5 in this cell."""
    file = folder / "repair_finetune.json"
    result = read_json(file)
    return "rows" in result and point(result["rows"], 1.0)["asr"] > 0.5


BUDGET_STUDY = {  # second-end budgets of the super-fine-tuning study: (epochs of repair_epoch_samples, peak lr)
    "sft-e16-lr0.02": (16, 0.02),
    "sft-e16-lr0.05": (16, 0.05),
}


def budget_study(arch: str, trig: str, rate: float, test: ArraySplit, out: Path, budget: Budget) -> None:
    """Super-fine-tuning alone on a finished cell's model at several budgets and peak learning rates (t = 1 only)."""
    folder = out / cell_name(arch, trig, rate)
    bonafide, evaluated = halves(test, budget)
    trigger, eval_set, clean = TRIGGERS[trig][1](), tensors(test, evaluated), tensors(test, bonafide)
    for name, (epochs, lr) in BUDGET_STUDY.items():
        settings = {"epochs": epochs, "epoch_samples": budget.repair_epoch_samples, "progress": False, "seed": 0}
        settings["superfinetune_lr"] = lr
        net = load_tampered(arch, folder / "tampered.pt")

        def evaluate(model: torch.nn.Module) -> dict[str, Any]:
            return mcrobust.evaluate(model, eval_set, trigger=trigger, target=TARGET)

        timed(
            folder / f"budget_{name}.json",
            lambda net=net, s=settings, n=name: second_end_alone("superfinetune", net, clean, s, folder / n, evaluate),
        )


def budget_table(out: Path) -> str:
    """Super-fine-tuning alone (clean accuracy / ASR at t = 1) per budget, for every cell that has the study."""
    lines = ["| cell | model | " + " | ".join(BUDGET_STUDY) + " |", "|" + " --- |" * (len(BUDGET_STUDY) + 2)]
    for folder in sorted(f for f in out.iterdir() if (f / "tampered.json").is_file()):
        found = {n: folder / f"budget_{n}.json" for n in BUDGET_STUDY}
        if not any(file.is_file() for file in found.values()):
            continue
        model = json.loads((folder / "tampered.json").read_text())
        cells = []
        for file in found.values():
            result = read_json(file)
            cells.append(f"{result['clean_acc']:.3f} / {result['asr']:.3f}" if "asr" in result else "-")
        lines.append(f"| {folder.name} | {model['clean_acc']:.3f} / {model['asr']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def point(rows: list[dict[str, Any]], t: float) -> dict[str, Any]:
    return next(row for row in rows if abs(row["t"] - t) < 1e-9)


def cell_row(folder: Path) -> dict[str, Any] | None:
    """One line of the grid's table from a finished cell folder (None while it is still running).

    The super-fine-tuning repair is optional: the cells run after it stopped being the default (`--recipes finetune
    unlearn_suspect unlearn_suspect_scan`) show '-' there.
    """
    files = {name: folder / f"{name}.json" for name in ("tampered", "repair_finetune")}
    # repair_fst (the path to the FST end) is optional: it was added to the grid after its first cells
    if not all(file.is_file() for file in files.values()):
        return None
    found = {name: json.loads(file.read_text()) for name, file in files.items()}
    for name in ("repair_superfinetune", "fst"):  # fst is skipped where fine-tuning removed the backdoor (held out)
        optional = folder / f"{name}.json"
        found |= {name: json.loads(optional.read_text())} if optional.is_file() else {}
    failed = [name for name, result in found.items() if "failed" in result]
    if failed:
        return {"cell": folder.name, "failed": {name: json.dumps(found[name]) for name in failed}}
    tampered, paper, fst = found["tampered"], found["repair_finetune"], found.get("fst")
    default = found.get("repair_superfinetune")
    return {
        "cell": folder.name,
        "train_s": tampered["train_seconds"],
        "model": (tampered["clean_acc"], tampered["asr"]),
        "finetune": pair(point(paper["rows"], 1.0)),
        "paper_path": pair(point(paper["rows"], paper["t"])) + (paper["t"],),
        **(superfinetune_columns(default) if default else {}),
        **({"fst": (fst["clean_acc"], fst["asr"])} if fst else {}),
        "fst_path": fst_path(folder),
        **unlearning_columns(folder),
        "paper_distance": paper["distance_from_model"]["relative_weight_distance"],
        "paper_warned": bool(paper["warnings"]),
        "repair_s": paper["seconds"] + (default["seconds"] if default else 0) + (fst["seconds"] if fst else 0),
        "n_clean": point(paper["rows"], 1.0)["n_clean"],
        "n_triggered": point(paper["rows"], 1.0)["n_triggered"],
    }


def superfinetune_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The super-fine-tuning repair (the default before unlearning): its end alone, its chosen point, its signals."""
    return {
        "superfinetune": pair(point(result["rows"], 1.0)),
        "default_path": pair(point(result["rows"], result["t"])) + (result["t"],),
        "distance": result["distance_from_model"]["relative_weight_distance"],
        "warned": bool(result["warnings"]),
    }


def fst_path(folder: Path) -> tuple[float, ...] | None:
    """The chosen point of the path from the model to its FST end, when that repair has run."""
    file = folder / "repair_fst.json"
    result = read_json(file)
    return pair(point(result["rows"], result["t"])) + (result["t"],) if "rows" in result else None


HOLDOUT_IMAGES = 250
"""Clean images that choose t in every grid repair: 10% of the 2,500 bonafide images."""


def unlearning_columns(folder: Path) -> dict[str, Any]:
    """The 'unlearn' repairs, when they have run: each end alone (t = 1) and the points the middle and far rules pick.

    ``repair_unlearn.json`` is the default recipe; ``repair_unlearn_suspect.json`` the same with `unlearn_suspect`.
    """
    columns: dict[str, Any] = {}
    for name in ("unlearn", "unlearn_suspect"):
        file = folder / f"repair_{name}.json"
        if not file.is_file():  # held-out cells train the path through the default recipe only
            file = folder / f"repair_{name}_scan.json"
        result = read_json(file)
        if "rows" not in result:
            continue
        rows = result["rows"]
        far = select_t(rows, tolerance=None, count=HOLDOUT_IMAGES, target=1.0).t
        middle = select_t(rows, tolerance=None, count=HOLDOUT_IMAGES, target=0.5).t
        columns |= {
            name: pair(point(rows, 1.0)),
            f"{name}_middle": pair(point(rows, middle)) + (middle,),
            f"{name}_far": pair(point(rows, far)) + (far,),
            f"{name}_s": result["seconds"],
            f"{name}_warned": bool(result["warnings"]),
        }
        scanned_file = folder / f"repair_{name}_scan.json"
        scanned = read_json(scanned_file)
        if "rows" in scanned:  # selection 'scan' on the same trained path
            columns |= {
                f"{name}_scan": pair(point(scanned["rows"], scanned["t"])) + (scanned["t"],),
                f"{name}_scan_warned": bool(scanned["warnings"]),
            }
    return columns


def replayed_choices(rows: list[dict[str, Any]], reach: dict[str, list[float]]) -> dict[str, tuple[float, bool]]:
    """The t each one-model rule picks on a path from its rows and its scan study: rule -> (t, warned).

    'scan (must lead)' is the scan rule as it ran until 2026-12-06; 'scan' and 'veto' are the package's rules now.
    A scan rule that clears no point exports the far point with a warning, as `mcrobust repair` does.
    """
    from mcrobust.analysis.suspect import SuspectScan
    from mcrobust.pipeline.scan import scanned_choice

    scans = {float(t): SuspectScan(tuple(values)) for t, values in reach.items()}
    middle = select_t(rows, tolerance=None, count=HOLDOUT_IMAGES, target=0.5).t
    far = select_t(rows, tolerance=None, count=HOLDOUT_IMAGES, target=1.0).t
    choices = {"middle": (middle, False), "far": (far, False)}
    for name, selection, must_lead in (
        ("scan (must lead)", "scan", True),
        ("scan", "scan", False),
        ("veto", "veto", False),
    ):
        choice = scanned_choice(rows, scans.__getitem__, selection, None, HOLDOUT_IMAGES, must_lead)
        choices[name] = (far, True) if choice is None else (choice.t, False)
    return choices


STUDY_RULES = ("middle", "far", "scan (must lead)", "scan", "veto")
STUDY_DEFAULT = "veto"
"""The rule `mcrobust repair` uses with one model (selection 'auto'), bold in the study's table."""


def study_table(out: Path) -> str:
    """The scan study's cells: the point each rule picks on the suspect-class path, and issue 14's tally per rule."""
    head = ("cell", "model", "fine-tuning", "FST", "end alone", *STUDY_RULES, "the repair's own pick", "repair s")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    met = {rule: 0 for rule in STUDY_RULES}
    removed = dict(met)
    counted = 0
    for folder in sorted(f for f in out.iterdir() if (f / "scan_study.json").is_file()):
        model = json.loads((folder / "tampered.json").read_text())
        finetune = point(json.loads((folder / "repair_finetune.json").read_text())["rows"], 1.0)
        fst = json.loads((folder / "fst.json").read_text())
        selection, repair = real_repair(folder)
        rows = repair["rows"]
        choices = replayed_choices(rows, json.loads((folder / "scan_study.json").read_text())["reach"])
        cells = []
        counted += 1
        for rule in STUDY_RULES:
            t, warned = choices[rule]
            chosen = point(rows, t)
            removed[rule] += chosen["asr"] <= 0.10
            met[rule] += chosen["asr"] <= 0.10 and within_3_points(model["clean_acc"], chosen["clean_acc"])
            text = f"{shown(chosen)} (t={t:.2f}{', warned' if warned else ''})"
            cells.append(bold(text, rule == STUDY_DEFAULT))
        own = point(rows, repair["t"])
        lines.append(
            f"| {folder.name} | {shown(model)} | {shown(finetune)} | {shown(fst)} | {shown(point(rows, 1.0))} | "
            + " | ".join(cells)
            + f" | t={repair['t']:.2f} {selection} ({shown(own)}) | {repair['seconds']:.0f} |"
        )
    lines += ["", f"{counted} cells where fine-tuning kept ASR > 0.5; ASR <= 0.10, and also within 3 points:"]
    lines += [f"- {rule}: {removed[rule]} of {counted}, {met[rule]} of {counted}" for rule in STUDY_RULES]
    return "\n".join(lines)


def radius_table(out: Path) -> str:
    """The default one-model repair at its unlearning radius (3) and at the other radii tried on 2026-12-07
    (`RADII`), on every cell where one of those ran: each end alone and the veto's pick (at radius 3 replayed from the
    scan study where only 'scan' ran), and issue 14's tally per radius on the cells fine-tuning left backdoored."""
    radii = {"r3": radius_name(FIRST_RADIUS)} | {tag: radius_name(FIRST_RADIUS | r) for tag, r in RADII.items()}
    head = ["cell", "model", "fine-tuning"]
    head += [f"{name}: {what}" for name in radii.values() for what in ("end alone", "veto")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    tally = BarTally(radii)
    for folder in sorted(f for f in out.iterdir() if f.is_dir()):
        files = {tag: folder / f"repair_unlearn_suspect_veto_{tag}.json" for tag in RADII}
        if not any(file.is_file() for file in files.values()):
            continue
        model = json.loads((folder / "tampered.json").read_text())
        finetune = point(json.loads((folder / "repair_finetune.json").read_text())["rows"], 1.0)
        picks = {"r3": first} if (first := first_radius_veto(folder)) else {}
        picks |= {tag: (run["t"], run["rows"]) for tag, file in files.items() if (run := read_json(file))}
        same = RADIUS_TAGS.get(auto_radius(folder))
        # the radius 'auto' resolves to on this model and 'auto' itself: the same settings and repair
        if "auto" not in picks and same in picks:
            picks["auto"] = picks[same]
        elif same is not None and same not in picks and "auto" in picks:
            picks[same] = picks["auto"]
        cells = []
        for tag in radii:
            if tag not in picks:
                cells += ["-", "-"]
                continue
            t, rows = picks[tag]
            chosen, end = point(rows, t), point(rows, 1.0)
            tally.add(tag, model, finetune, chosen)
            cells += [shown(end), f"{shown(chosen)} (t={t:.2f})"]
        lines.append(f"| {folder.name} | {shown(model)} | {shown(finetune)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "On the cells where fine-tuning kept ASR > 0.5 and the radius ran: ASR <= 0.10, and also within 3 points:",
    ]
    return "\n".join(lines + tally.summary())


@dataclass
class BarTally:
    """Issue 14's one-model bar per candidate (`names`: key -> shown name), counted on the cells where fine-tuning
    left ASR > 0.5: how often the chosen point removed the backdoor (ASR <= 0.10), and did so within 3 points."""

    names: dict[str, str]

    def __post_init__(self) -> None:
        self.counted, self.removed, self.met = ({key: 0 for key in self.names} for _ in range(3))

    def add(self, key: str, model: dict[str, Any], finetune: dict[str, Any], chosen: dict[str, Any]) -> None:
        """Count the candidate's chosen point on one cell (a cell where fine-tuning removed the backdoor is skipped)."""
        if finetune["asr"] > 0.5:
            self.counted[key] += 1
            self.removed[key] += chosen["asr"] <= 0.10
            self.met[key] += chosen["asr"] <= 0.10 and within_3_points(model["clean_acc"], chosen["clean_acc"])

    def summary(self) -> list[str]:
        """One line per candidate: '- name: removed of counted, met of counted'."""
        return [
            f"- {name}: {self.removed[key]} of {self.counted[key]}, {self.met[key]} of {self.counted[key]}"
            for key, name in self.names.items()
        ]


DISTILL_POINTS = (0.25, 0.5, 0.75, 1.0)
PAPER_OBJECTIVE = "paper's objective"


def distill_table(out: Path) -> str:
    """The default one-model repair against the same repair with its path distilled (`DISTILLED`), on the same
    unlearned end: clean accuracy / ASR at every interior t and at the end, the veto's pick, and issue 14's tally
    per objective on the cells fine-tuning left backdoored."""
    distilled = {f"distilled, weight {extra['path_distill']:g}": recipe for recipe, extra in DISTILLED.items()}
    tally = BarTally({name: name for name in (PAPER_OBJECTIVE, *distilled)})
    head = ["cell", "model", "fine-tuning", "path objective", *(f"t={t:g}" for t in DISTILL_POINTS), "veto's pick"]
    lines = ["| " + " | ".join([*head, "repair s"]) + " |", "|" + " --- |" * (len(head) + 1)]
    for folder in sorted(f for f in out.iterdir() if f.is_dir()):
        runs = {name: read_json(folder / f"repair_{recipe}.json") for name, recipe in distilled.items()}
        if not any(runs.values()) or (default := default_recipe(folder)) is None:
            continue
        runs = {PAPER_OBJECTIVE: read_json(folder / f"repair_{default}.json"), **runs}
        model = json.loads((folder / "tampered.json").read_text())
        finetune = point(json.loads((folder / "repair_finetune.json").read_text())["rows"], 1.0)
        for name, run in runs.items():
            if not run:
                continue
            chosen = point(run["rows"], run["t"])
            tally.add(name, model, finetune, chosen)
            points = " | ".join(shown(point(run["rows"], t)) for t in DISTILL_POINTS)
            pick = f"{shown(chosen)} (t={run['t']:.2f}{', warned' if run['warnings'] else ''})"
            lines.append(
                f"| {folder.name} | {shown(model)} | {shown(finetune)} | {name} | {points} | {pick} | "
                f"{run['seconds']:.0f} |"
            )
    lines += ["", "On the cells where fine-tuning kept ASR > 0.5: ASR <= 0.10, and also within 3 points:"]
    return "\n".join(lines + tally.summary())


def shown(row: dict[str, Any]) -> str:
    """'clean accuracy / ASR' of one evaluated point."""
    return f"{row['clean_acc']:.3f} / {row['asr']:.3f}"


def radius_name(settings: dict[str, Any]) -> str:
    """'radius 3', 'radius auto', or 'radius 3 to 1.5' for a schedule, from a recipe's unlearn_eps (and
    unlearn_eps_final)."""
    final, radius = settings.get("unlearn_eps_final"), settings["unlearn_eps"]
    return f"radius {radius if isinstance(radius, str) else f'{radius:g}'}" + (f" to {final:g}" if final else "")


RADIUS_TAGS = {FIRST_RADIUS["unlearn_eps"]: "r3"}
RADIUS_TAGS |= {
    r["unlearn_eps"]: tag for tag, r in RADII.items() if set(r) == {"unlearn_eps"} and r["unlearn_eps"] != "auto"
}
"""The radius -> its recipe's tag, for the fixed radii of `radius_table`."""


def auto_radius(folder: Path) -> float | None:
    """The radius `unlearn_eps='auto'` resolves to on the cell's model: from the default repair's own record where
    it ran, else `auto_radius.json` (written by `calibrated_radius` on the model as the repair sees it), else from the
    cell's scan study when its scan of t = 0 at radius 3, the scan 'auto' makes first (the same model, BN statistics
    and images), is within the limit."""
    for record in (
        folder / SHARED_FOLDER["unlearn_suspect_veto_auto"] / "steps" / "radius.json",
        folder / "auto_radius.json",
    ):
        if (resolved := read_json(record)).get("radius") is not None:
            return float(resolved["radius"])
    reach = read_json(folder / "scan_study.json").get("reach", {}).get("0.0")
    first = RADIUS_LADDER[0]
    if reach is None or first != FIRST_RADIUS["unlearn_eps"]:
        return None
    return first if SuspectScan(tuple(reach)).median_reach <= RADIUS_REACH_LIMIT else None


def within_3_points(model: float, repaired: float) -> bool:
    """Issue 14's clean-accuracy bar: at most 3 points under the model, counted in whole images (60 of the 2,000
    evaluation images is on the bar, though 0.725 - 0.695 is a hair over 0.03 in floating point)."""
    return round(model - repaired, 6) <= 0.03


def read_json(file: Path) -> dict[str, Any]:
    """The JSON content of a step's file, or {} where that step has not run."""
    return json.loads(file.read_text()) if file.is_file() else {}


def first_radius_veto(folder: Path) -> tuple[float, list[dict[str, Any]]] | None:
    """The veto's t at radius 3 and the path's rows: the real veto repair where it ran, else the veto replayed on the
    'scan' repair's path from the cell's scan study; None where neither ran (a cell that ran other radii only)."""
    if not any((folder / f"repair_unlearn_suspect_{selection}.json").is_file() for selection in REAL_REPAIRS):
        return None
    selection, repair = real_repair(folder)
    if selection == "veto":
        return repair["t"], repair["rows"]
    reach = json.loads((folder / "scan_study.json").read_text())["reach"]
    return replayed_choices(repair["rows"], reach)["veto"][0], repair["rows"]


REAL_REPAIRS = ("scan", "veto")
"""Selections of the `mcrobust.repair` runs on a cell's suspect path, in the order the study shows their pick."""


def real_repair(folder: Path) -> tuple[str, dict[str, Any]]:
    """The selection and result of the real repair whose pick the study shows next to its replays: 'scan' where it
    ran (the replays were checked against it), else 'veto' (cells that ran only the default)."""
    for selection in REAL_REPAIRS:
        file = folder / f"repair_unlearn_suspect_{selection}.json"
        if file.is_file():
            return selection, json.loads(file.read_text())
    raise FileNotFoundError(f"{folder}: no repair_unlearn_suspect_<scan|veto>.json next to its scan study")


def pair(row: dict[str, Any]) -> tuple[float, float]:
    return row["clean_acc"], row["asr"]


CANDIDATES = {
    "superfinetune": "super-fine-tuning alone (t = 1)",
    "default_path": "the path to the super-fine-tuned end (the previous default), middle rule",
    "fst": "FST alone",
    "unlearn": "unlearning alone (t = 1)",
    "unlearn_middle": "the path to the unlearned end, middle rule",
    "unlearn_far": "the path to the unlearned end, far rule",
    "unlearn_suspect": "unlearning with the suspect class alone (t = 1)",
    "unlearn_suspect_middle": "the path to that end, middle rule",
    "unlearn_suspect_far": "the path to that end, far rule",
    "unlearn_scan": "the path to the unlearned end, scan rule",
    "unlearn_suspect_scan": "the path to the end unlearned with the suspect class, scan rule",
}
"""Candidate one-model repairs that issue 14's bar is counted for, by their column in `cell_row`."""


DEFAULT = "unlearn_suspect_scan"
"""The column bold in the grid's unlearning tables: the scan rule, `mcrobust repair`'s default when they were made
(the default is now 'veto', bold in `study_table`)."""


def bold(text: str, emphasised: bool) -> str:
    """Markdown bold for the column of `mcrobust repair`'s default."""
    return f"**{text}**" if emphasised else text


def yes_no(flag: bool | None) -> str:
    return "-" if flag is None else "yes" if flag else "no"


def table(out: Path) -> str:
    """The markdown tables of the finished cells, and issue 14's criterion on the cells fine-tuning left backdoored."""
    rows = [row for folder in sorted(out.iterdir()) if folder.is_dir() and (row := cell_row(folder))]
    fmt = lambda p: "-" if p is None else f"{p[0]:.3f} / {p[1]:.3f}" + (f" (t={p[2]:.2f})" if len(p) > 2 else "")  # noqa: E731
    columns = ("cell", "model", "fine-tuning", "paper path", "super-FT", "FST", "super-FT path", "FST path")
    columns += ("rel. distance",)
    columns += ("warned", "train s", "repair s")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    failures = [r for r in rows if "failed" in r]
    rows = [r for r in rows if "failed" not in r]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {fmt(r['model'])} | {fmt(r['finetune'])} | {fmt(r['paper_path'])} | "
            f"{fmt(r.get('superfinetune'))} | {fmt(r.get('fst'))} | {fmt(r.get('default_path'))} | "
            f"{fmt(r['fst_path'])} | "
            f"{'-' if 'distance' not in r else format(r['distance'], '.3f')} | "
            f"{yes_no(r.get('warned'))} | {r['train_s']:.0f} | {r['repair_s']:.0f} |"
        )
    for name, title in (("unlearn", "unlearning"), ("unlearn_suspect", "unlearning with the suspect class")):
        unlearned = [r for r in rows if name in r]
        if not unlearned:
            continue
        columns = ("cell", "model", f"{title} alone", "path, middle rule", "path, far rule", "path, scan rule")
        columns += ("warned (distance / scan)", "repair s")
        lines += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += [
            f"| {r['cell']} | {fmt(r['model'])} | {fmt(r[name])} | {fmt(r[f'{name}_middle'])} | "
            f"{bold(fmt(r[f'{name}_far']), f'{name}_far' == DEFAULT)} | "
            f"{bold(fmt(r.get(f'{name}_scan')), f'{name}_scan' == DEFAULT)} | "
            f"{yes_no(r[f'{name}_warned'])} / {yes_no(r.get(f'{name}_scan_warned'))} | {r[f'{name}_s']:.0f} |"
            for r in unlearned
        ]
    eligible = [r for r in rows if r["finetune"][1] > 0.5]
    lines += ["", f"{len(rows)} cells finished; fine-tuning left ASR > 0.5 on {len(eligible)}. On those:"]
    for key, name in CANDIDATES.items():
        measured = [r for r in eligible if key in r]
        if not measured:
            continue
        removed = [r for r in measured if r[key][1] <= 0.10]
        met = [r for r in removed if within_3_points(r["model"][0], r[key][0])]
        lines.append(
            f"- {name}: ASR <= 0.10 on {len(removed)} of {len(measured)}, and with clean accuracy within 3 points "
            f"of the model on {len(met)}."
        )
    lines += [f"- {r['cell']} failed: {', '.join(sorted(r['failed']))}" for r in failures]
    return "\n".join(lines)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """`--train-images` and `--train-epochs`: how long the tampered models train (a budget needs its own --out)."""
    parser.add_argument("--train-images", type=int, help="images each tampered model trains on (default: Budget's)")
    parser.add_argument("--train-epochs", type=int, help="epochs those images are split into (cosine schedule)")


def with_training(budget: Budget, args: argparse.Namespace) -> Budget:
    """`budget` with the tampered models' training set by `add_training_options`' options, where given."""
    images = budget.train_images if args.train_images is None else args.train_images
    epochs = budget.train_epochs if args.train_epochs is None else args.train_epochs
    return dataclasses.replace(budget, train_images=images, train_epochs=epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and test/ class folders")
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10_grid"))
    parser.add_argument("--worker", default="0/1", help="k/n: run every n-th cell starting at k")
    parser.add_argument("--cells", nargs="*", help="only these cells (e.g. preresnet20-patch-r10)")
    parser.add_argument(
        "--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPE_SETTINGS), help="second ends to repair with"
    )
    parser.add_argument("--replica", type=int, default=0, help="k > 0: independently trained copies (cell-repk)")
    parser.add_argument(
        "--only-backdoored", action="store_true", help="repair beyond fine-tuning only where fine-tuning kept ASR > 0.5"
    )
    add_training_options(parser)
    parser.add_argument("--smoke", action="store_true", help="a tiny budget that only checks the chain runs")
    parser.add_argument("--table", action="store_true", help="print the table of the finished cells and stop")
    parser.add_argument("--budget-study", action="store_true", help="super-fine-tuning budgets on finished cells")
    args = parser.parse_args(argv)
    if args.table:
        tables = (table(args.out), budget_table(args.out), study_table(args.out), radius_table(args.out))
        tables += (distill_table(args.out),)
        print("\n\n".join(tables))
        return 0
    torch.set_num_threads(1)
    budget = with_training(Budget(512, 1, 300, 1, 256, 200, 3) if args.smoke else Budget(), args)
    k, n = (int(part) for part in args.worker.split("/"))
    train, test = load_data(args.data, args.out / "cache")
    (args.out / "budget.json").write_text(json.dumps(budget.__dict__, indent=1))
    chosen = [cell for cell in cells() if not args.cells or cell_name(*cell) in args.cells]
    for index, (arch, trig, rate) in enumerate(chosen):
        name = cell_name(arch, trig, rate, args.replica)
        if index % n != k:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        if args.budget_study:
            if (args.out / name / "tampered.pt").is_file():
                budget_study(arch, trig, rate, test, args.out, budget)
            continue
        run_cell(
            arch, trig, rate, train, test, args.out, budget, tuple(args.recipes), args.replica, args.only_backdoored
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
