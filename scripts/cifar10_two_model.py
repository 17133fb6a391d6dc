"""The paper's two-model protocol on the CIFAR-10 grid (docs/results.md, "Two models per cell").

    OMP_NUM_THREADS=1 .venv/bin/python scripts/cifar10_two_model.py --data /path/to/cifar10-jpeg \\
        --out runs/cifar10_grid --cells vgg_small_bn-patch-r10

For a cell of `scripts/cifar10_grid.py` (its tampered model is trained first if it is missing) a second tampered
model is trained independently (its own initialisation, data order and poisoned images), and at every N of
`SIZES` the same N bonafide images (one half of the test split; evaluation on the other half) and the same budget
(epochs x a fixed epoch length) serve (`--train-images` trains the models longer, in a folder of its own):

* the path between the two models (`mcrobust.repair(model, clean, second=...)`, t chosen on the clean holdout),
* fine-tuning each model (the paper's settings), fine-pruning the first (Liu et al. 2018, half the channels of the
  last feature layer) and a net trained from scratch (the super-fine-tuning schedule, crop+flip),

each evaluated on the same 2,000 held-out test images: clean accuracy, ASR and the triggered images' accuracy on
their true labels (RA), with 95% Wilson intervals in `--table`. The table then compares the path with fine-tuning
twice: its chosen point (clean data only), and its curve at each fine-tuned end's ASR (issue 14's bar, t read with
the trigger). Every step is a JSON file under
`<out>/<cell>/two_model/N<n>/`; a rerun skips what has finished.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cifar10_grid as grid  # noqa: E402

import mcrobust  # noqa: E402
from mcrobust.analysis.statistics import wilson_interval  # noqa: E402
from mcrobust.data.bonafide import split_stratified  # noqa: E402

SIZES = (2500, 500, 50)
"""Bonafide set sizes N of the paper's Table 1 (5%, 1% and 0.1% of CIFAR-10's training set)."""

PRUNE_RATIO = 0.5
BASELINES = ("finetune_a", "finetune_b", "fineprune_a", "scratch")
PURIFICATIONS = ("superfinetune_a", "fst_a")
"""The two published fine-tuning-based purifications on model A (Sha et al. 2022, Min et al. 2023): issue 14 asks the
path to beat the best of them too, not only the paper's fine-tuning."""
DISTILL = 1.0
STRONG_DISTILL = 4.0
"""Weights of the distillation term of `path_kd` and `path_kd4` (`ChainSettings.path_distill`)."""
PATHS = {
    "path": "path",
    "path_aug": "path, crop+flip",
    "path_kd": "path, distilled",
    "path_kd_aug": "path, distilled, crop+flip",
    "path_kd4": "path, distilled x4",
}
"""The path as the paper trains it, on crop+flip augmented images, with distillation from both ends (`DISTILL`), and
with both, and with a distillation term four times stronger: each a step of the study and a column of
`purification_table`."""
STEPS = ("path", *BASELINES, "path_aug", *PURIFICATIONS, "path_kd", "path_kd_aug", "path_kd4")
"""What runs at every N; `--steps` may run fewer (e.g. a longer budget for the path and one fine-tuned end)."""


def bonafide_of_size(test: Any, size: int) -> np.ndarray:
    """N images of the bonafide half of the test split, stratified (the evaluation half is never touched)."""
    pool, _ = split_stratified(test.labels, 0.5, seed=0)
    return pool[split_stratified(test.labels[pool], size, seed=1)[0]]


def pruned_layer_of(net: torch.nn.Module) -> str | None:
    """The layer fine-pruning ranks: the last conv (None, the default), or the final BN of a pre-activation net."""
    return "bn" if isinstance(getattr(net, "bn", None), torch.nn.BatchNorm2d) else None


def fine_pruning_alone(
    net: torch.nn.Module, clean: Any, settings: dict[str, Any], folder: Path, evaluate: Any
) -> dict[str, Any]:
    """Fine-pruning on the repair's bonafide-train part with the repair's budget and fine-tuning optimizer."""
    from mcrobust.pipeline.chain import RepairChain, repair_data
    from mcrobust.pipeline.inputs import as_split
    from mcrobust.pipeline.settings import ChainSettings
    from mcrobust.systems.fine_pruning import FinePruningSystem
    from mcrobust.utils.schedules import PaperSchedule

    chain_settings = ChainSettings(**settings)
    chain = RepairChain(net.cpu(), repair_data(as_split(clean, "clean"), None, chain_settings), chain_settings, folder)
    start = chain.save_endpoint("model", net)
    optimizer = partial(
        torch.optim.SGD, lr=chain_settings.finetune_lr, momentum=0.9, weight_decay=chain_settings.weight_decay
    )
    system = FinePruningSystem(
        copy.deepcopy(net),
        init_weights=str(start),
        layer=pruned_layer_of(net),
        prune_ratio=PRUNE_RATIO,
        optimizer=optimizer,
        scheduler=PaperSchedule,
    )
    chain.fit(system, "fine_pruning")
    return {**evaluate(system.net.eval()), "pruned_channels": len(system.pruned_channels)}


def study_name(budget: grid.Budget) -> str:
    """The folder of a cell's two-model study: `two_model` at the grid's budget, `two_model_e<epochs>` otherwise."""
    return "two_model" if budget.repair_epochs == grid.Budget.repair_epochs else f"two_model_e{budget.repair_epochs}"


def run_two_model(
    arch: str,
    trig: str,
    rate: float,
    train: Any,
    test: Any,
    out: Path,
    budget: grid.Budget,
    sizes: tuple[int, ...] = SIZES,
    steps: tuple[str, ...] = STEPS,
) -> None:
    """Both models of the cell, then the path and the baselines (those of `steps`) at every N of `sizes`."""
    folder = out / grid.cell_name(arch, trig, rate)
    trigger = grid.TRIGGERS[trig][1]()
    _, evaluated = grid.halves(test, budget)
    eval_set = grid.tensors(test, evaluated)

    def evaluate(net: torch.nn.Module) -> dict[str, Any]:
        return mcrobust.evaluate(net, eval_set, trigger=trigger, target=grid.TARGET)

    weights = [tampered_model(arch, trig, rate, train, test, folder, budget, replica, evaluate) for replica in (0, 1)]
    settings = {"epochs": budget.repair_epochs, "epoch_samples": budget.repair_epoch_samples, "seed": 0}
    settings |= {"progress": False, "num_points": budget.num_points}
    for size in sizes:
        clean = grid.tensors(test, bonafide_of_size(test, size))
        models = [grid.load_tampered(arch, file) for file in weights]
        step = folder / study_name(budget) / f"N{size}"
        run_size(step, models, clean, settings, trigger, eval_set, evaluate, steps)


def tampered_model(
    arch: str,
    trig: str,
    rate: float,
    train: Any,
    test: Any,
    folder: Path,
    budget: grid.Budget,
    replica: int,
    evaluate: Any,
) -> Path:
    """The cell's model `replica` (trained if missing) and its evaluation next to it; returns its weights file.

    A model already trained on another number of images is refused: `--train-images` needs its own `--out`.
    """
    name = "tampered.json" if replica == 0 else f"tampered_{replica}.json"
    grid.refuse_other_budget(folder / name, budget)
    started = time.perf_counter()
    file = grid.train_tampered(arch, trig, rate, train, test, folder, budget, replica=replica)
    trained = round(time.perf_counter() - started, 1)
    facts = {"train_seconds": trained, **grid.trained_on(budget)}
    grid.timed(folder / name, lambda: {**facts, **evaluate(grid.load_tampered(arch, file))})
    return file


def run_size(
    step: Path,
    models: list[torch.nn.Module],
    clean: Any,
    settings: dict[str, Any],
    trigger: Any,
    eval_set: Any,
    evaluate: Any,
    steps: tuple[str, ...] = STEPS,
) -> None:
    """At one N: the path between the two models, then the baselines, on the same images with the same budget
    (only those named in `steps`)."""
    a, b = models

    def path(name: str, **extra: Any) -> dict[str, Any]:
        kept = {"trigger": trigger, "target": grid.TARGET, "eval": eval_set, "out": step / name}
        return grid.repair_record(mcrobust.repair(a, clean, second=b, **kept, **settings, **extra))

    single = {key: value for key, value in settings.items() if key != "num_points"}
    runs = {
        "path": partial(path, "path", path_distill=0.0),  # the paper's objective, whatever the default
        "path_aug": partial(path, "path_aug", path_augment=True, path_distill=0.0),
        "path_kd": partial(path, "path_kd", path_distill=DISTILL),
        "path_kd_aug": partial(path, "path_kd_aug", path_augment=True, path_distill=DISTILL),
        "path_kd4": partial(path, "path_kd4", path_distill=STRONG_DISTILL),
        "superfinetune_a": partial(grid.second_end_alone, "superfinetune", a, clean, single, step / "sft_a", evaluate),
        "fst_a": partial(grid.second_end_alone, "fst", a, clean, single, step / "fst_a", evaluate),
        "finetune_a": partial(grid.second_end_alone, "finetune", a, clean, single, step / "finetune_a", evaluate),
        "finetune_b": partial(grid.second_end_alone, "finetune", b, clean, single, step / "finetune_b", evaluate),
        "fineprune_a": partial(fine_pruning_alone, a, clean, single, step / "fineprune", evaluate),
        "scratch": partial(grid.second_end_alone, "scratch", a, clean, single, step / "scratch", evaluate),
    }
    for name in STEPS:  # the path first, then the baselines
        if name in steps:
            file = path_file(settings["num_points"], name) if name.startswith("path") else f"{name}.json"
            grid.timed(step / file, runs[name])


def path_file(num_points: int, name: str = "path") -> str:
    """The path's result at the grid's 5 points is `path.json` (`path_aug.json`); a re-evaluation of the same trained
    path at more points (`--num-points`, the path is resumed, not retrained) is `path_p<points>.json`."""
    return f"{name}.json" if num_points == grid.Budget.num_points else f"{name}_p{num_points}.json"


def finest_path(step: Path, name: str = "path") -> Path:
    """The path's result (`name`: 'path' or 'path_aug') evaluated at the most points."""
    refined = sorted(step.glob(f"{name}_p*.json"), key=points_of)
    return refined[-1] if refined else step / f"{name}.json"


def trained_seconds(step: Path, name: str = "path") -> float:
    """Seconds of the run that trained the path: its evaluation at the fewest points (a re-evaluation adds points)."""
    evaluated = [step / f"{name}.json", *sorted(step.glob(f"{name}_p*.json"), key=points_of)]
    runs = [json.loads(file.read_text()) for file in evaluated if file.is_file()]
    return next((run["seconds"] for run in runs if "seconds" in run), float("nan"))


def points_of(file: Path) -> int:
    """The number of evaluated t of a `<name>_p<points>.json` result."""
    return int(file.stem.rsplit("_p", 1)[1])


def interval(fraction: float, n: int) -> str:
    low, high = wilson_interval(fraction, n) or (float("nan"), float("nan"))
    return f"{fraction:.3f} [{low:.2f}, {high:.2f}]"


def measured(result: dict[str, Any]) -> str:
    """'clean / ASR / RA' with 95% Wilson intervals of one evaluated model ('diverged' for a stage that did)."""
    if "failed" in result:
        return "diverged" if "diverged" in result["failed"] else "failed"
    n, m = result["n_clean"] if "n_clean" in result else result["n"], result["n_triggered"]
    return f"{interval(result['clean_acc'], n)} / {interval(result['asr'], m)} / {interval(result['ra'], m)}"


def two_model_table(out: Path) -> str:
    """One line per (cell, N): both models, the chosen path point and every baseline."""
    columns = ("cell", "epochs", "N", "model A", "model B", "path (chosen t)", "fine-tune A", "fine-tune B")
    columns += ("fine-prune A", "scratch", "path s", "model images")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    summary, outcomes, curve, curve_outcomes = [], [], [], []
    studies = sorted((f, s) for f in out.iterdir() if f.is_dir() for s in f.glob("two_model*") if s.is_dir())
    for folder, study in studies:
        ends = [json.loads((folder / name).read_text()) for name in ("tampered.json", "tampered_1.json")]
        epochs = study.name.removeprefix("two_model_e") if study.name != "two_model" else str(grid.Budget.repair_epochs)
        for size in SIZES:
            step = study / f"N{size}"
            files = {"path": finest_path(step)} | {name: step / f"{name}.json" for name in BASELINES}
            results = {name: json.loads(file.read_text()) for name, file in files.items() if file.is_file()}
            if "path" not in results or not {"finetune_a", "finetune_b"} & set(results):
                continue
            if "failed" in results["path"]:
                lines.append(f"| {folder.name} | {epochs} | {size} | path failed: {results['path']['failed']} |")
                continue
            path = results["path"]
            chosen = grid.point(path["rows"], path["t"])
            cells = [
                measured(ends[0]),
                measured(ends[1]),
                measured(chosen) + f" (t={path['t']:g} of {len(path['rows'])})",
            ]
            cells += [measured(results[name]) if name in results else "not run" for name in BASELINES]
            cells += [f"{trained_seconds(step):.0f}", f"{grid.trained_images(ends[0]):,}"]
            lines.append(f"| {folder.name} | {epochs} | {size} | " + " | ".join(cells) + " |")
            summary.append(beats_fine_tuning(f"{folder.name} ({epochs} epochs)", size, chosen, results))
            outcomes.append((int(epochs), size, summary[-1].rsplit(": ", 1)[1]))
            curve.append(curve_against_fine_tuning(f"{folder.name} ({epochs} epochs)", size, path["rows"], results))
            curve_outcomes.append((int(epochs), size, curve[-1].rsplit(": ", 1)[1]))
    return "\n".join(
        lines
        + ["", "The chosen point (t from the clean holdout) against the fine-tuned ends:"]
        + summary
        + ["", "Cells per outcome:"]
        + tally(outcomes)
        + ["", "The path's curve at each fine-tuned end's ASR (the best interior t, read with the trigger):"]
        + curve
        + ["", "Cells per outcome:"]
        + tally(curve_outcomes)
    )


PURIFIERS = {
    "finetune_a": "fine-tune A",
    "finetune_b": "fine-tune B",
    "superfinetune_a": "super-fine-tune A",
    "fst_a": "FST A",
    "fineprune_a": "fine-prune A",
}
"""Every fine-tuning-based purification of the study, each a bar the path must clear (issue 14: 'the best
fine-tuning-based purification at the same budget, not only plain fine-tuning')."""


def short(result: dict[str, Any] | None) -> str:
    """'clean / ASR' of one evaluated model, or why there is none."""
    if result is None:
        return "not run"
    return measured(result) if "failed" in result else grid.shown(result)


def matched_pairs(rows: list[dict[str, Any]], ends: dict[str, dict[str, Any]]) -> str:
    """'purifier clean / ASR -> the path's matched point' for every purifier that finished."""
    pairs = []
    for name, end in ends.items():
        point = matched_point(rows, end)
        found = "none" if point is None else f"{short(point)} (t={point['t']:g})"
        pairs.append(f"{PURIFIERS[name]} {short(end)} -> {found}")
    return "; ".join(pairs)


def path_points_table(out: Path) -> str:
    """Every trained path of the studies (each of `PATHS`) at every evaluated t: clean / ASR, the chosen t in bold."""
    lines = []
    studies = sorted((f, s) for f in out.iterdir() if f.is_dir() for s in f.glob("two_model*") if s.is_dir())
    for folder, study in studies:
        epochs = study.name.removeprefix("two_model_e") if study.name != "two_model" else str(grid.Budget.repair_epochs)
        for size in SIZES:
            for name, label in PATHS.items():
                file = finest_path(study / f"N{size}", name)
                path = json.loads(file.read_text()) if file.is_file() else {}
                if "rows" not in path:
                    continue
                points = [
                    (f"**{short(row)}**" if row["t"] == path["t"] else short(row)) + f" ({row['t']:g})"
                    for row in path["rows"]
                    if 0 < row["t"] < 1
                ]
                lines.append(
                    f"| {folder.name} | {epochs} | {size} | {label} | {trained_seconds(file.parent, name):.0f} | "
                    + ", ".join(points)
                    + " |"
                )
    if not lines:
        return ""
    header = [
        "| cell | epochs | N | path | s | clean / ASR (t) at every interior t |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(header + lines)


def purification_table(out: Path) -> str:
    """Both paths (plain and crop+flip) against every fine-tuning-based purification, where those were run.

    Per (cell, N): each path's chosen point (clean data only) and, with every purification as an end to match,
    the verdicts of `verdict` (the chosen point) and `curve_verdict` (the curve at each purifier's ASR).
    """
    columns = ("cell", "epochs", "N", *(f"{label} (chosen t)" for label in PATHS.values()), *PURIFIERS.values())
    columns += ("scratch",)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    notes: list[str] = []
    outcomes: dict[str, list[tuple[int, int, str]]] = {label: [] for label in PATHS.values()}
    studies = sorted((f, s) for f in out.iterdir() if f.is_dir() for s in f.glob("two_model*") if s.is_dir())
    for folder, study in studies:
        epochs = study.name.removeprefix("two_model_e") if study.name != "two_model" else str(grid.Budget.repair_epochs)
        for size in SIZES:
            step = study / f"N{size}"
            files = {name: finest_path(step, name) for name in PATHS}
            files |= {name: step / f"{name}.json" for name in (*PURIFIERS, "scratch")}
            results = {name: json.loads(file.read_text()) for name, file in files.items() if file.is_file()}
            if not set(PURIFICATIONS) & set(results):
                continue
            paths = {name: results[name] for name in PATHS if "rows" in results.get(name, {})}
            chosen = {name: grid.point(path["rows"], path["t"]) for name, path in paths.items()}
            cells = [
                f"{short(chosen[name])} (t={paths[name]['t']:g})" if name in chosen else short(results.get(name))
                for name in PATHS
            ]
            cells += [short(results.get(name)) for name in (*PURIFIERS, "scratch")]
            lines.append(f"| {folder.name} | {epochs} | {size} | " + " | ".join(cells) + " |")
            ends = {name: results[name] for name in PURIFIERS if "clean_acc" in results.get(name, {})}
            for name, path in paths.items():
                label = PATHS[name]
                outcome = curve_verdict(path["rows"], list(ends.values()))
                picked = verdict(chosen[name], list(ends.values()))
                notes.append(
                    f"- {folder.name} ({epochs} epochs) N={size}, {label}: chosen point {picked}; "
                    f"curve {outcome} ({matched_pairs(path['rows'], ends)})"
                )
                outcomes[label].append((int(epochs), size, outcome))
    if len(lines) == 2:
        return ""
    return "\n".join(
        lines
        + ["", "Each path against every purification (chosen point: clean data only; curve: t read with the trigger):"]
        + notes
        + ["", "Curve verdicts per path, budget and N:"]
        + [f"- {label}, {line[2:]}" for label, found in outcomes.items() for line in tally(found)]
    )


KEPT_ASR = 0.5
"""A chosen point above this ASR kept the backdoor, whatever its clean accuracy."""
MATCHED_ASR = 0.05
MATCHED_CLEAN = 0.01
"""Differences up to these count as matched when the path is compared with a fine-tuned end (the 95% half-widths
on 2,000 / 1,800 images are about 0.022)."""


def dominates(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """`first` is no worse than `second` in clean accuracy and ASR (up to the matched margins) and better in one."""
    clean, asr = first["clean_acc"] - second["clean_acc"], first["asr"] - second["asr"]
    no_worse = clean >= -MATCHED_CLEAN and asr <= MATCHED_ASR
    return no_worse and (clean > MATCHED_CLEAN or asr < -MATCHED_ASR)


def verdict(chosen: dict[str, Any], tuned: list[dict[str, Any]]) -> str:
    """Issue 14's comparison of the path's chosen point with the fine-tuned ends, at matched ASR.

    The path wins when it dominates a fine-tuned end and neither dominates it; it loses when either does; otherwise
    (one has the lower ASR, the other the higher clean accuracy) it is a trade-off.
    """
    if not tuned:
        return NO_END
    if any(dominates(end, chosen) for end in tuned):
        return "loses"
    if not any(dominates(chosen, end) for end in tuned):
        return "trade-off"
    return "wins" if chosen["asr"] <= KEPT_ASR else "wins, but keeps the backdoor"


NO_END = "no comparison: no fine-tuned end finished"
"""The verdict of an N whose fine-tuned ends all diverged or were not run (nothing to compare the path with)."""


def fine_tuned_ends(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The fine-tuned ends of one N, a diverged or not run one left out of every comparison."""
    return [results[name] for name in ("finetune_a", "finetune_b") if "clean_acc" in results.get(name, {})]


def beats_fine_tuning(cell: str, size: int, chosen: dict[str, Any], results: dict[str, Any]) -> str:
    """One line of the comparison: the chosen point, both fine-tuned ends (a diverged one left out), the verdict."""
    tuned = fine_tuned_ends(results)
    ends = ", ".join(f"{end['clean_acc']:.3f} / {end['asr']:.3f}" for end in tuned)
    return f"- {cell} N={size}: path {chosen['clean_acc']:.3f} / {chosen['asr']:.3f}, fine-tuned ends {ends}: " + (
        verdict(chosen, tuned)
    )


def matched_point(rows: list[dict[str, Any]], end: dict[str, Any]) -> dict[str, Any] | None:
    """The cleanest interior point of the path whose ASR is at most the fine-tuned end's (up to the margin)."""
    matched = [row for row in rows if 0 < row["t"] < 1 and row["asr"] <= end["asr"] + MATCHED_ASR]
    return max(matched, key=lambda row: row["clean_acc"], default=None)


def curve_verdict(rows: list[dict[str, Any]], tuned: list[dict[str, Any]]) -> str:
    """Issue 14's bar read on the whole path: its clean accuracy at each fine-tuned (or purified) end's ASR.

    This is the comparison of the paper's figures: t is read with the trigger, which a defender cannot do, so it
    says what the path offers, not what the clean-only rule picks. The path loses when it is less clean (by more than
    the margin) than one end at that end's ASR. An end whose ASR no interior point reaches (up to the margin) is a
    trade-off when it is less clean than the path's lowest-ASR interior point (it bought the lower ASR with clean
    accuracy), and beats the path otherwise. Else the path is matched, or wins when it is cleaner than every end; a
    win where the ends keep the backdoor (ASR above `KEPT_ASR`) says so.
    """
    if not tuned:
        return NO_END
    interior = [row for row in rows if 0 < row["t"] < 1]
    lowest = min(interior, key=lambda row: (row["asr"], -row["clean_acc"]))
    gaps, out_of_reach = [], []
    for end in tuned:
        point = matched_point(rows, end)
        if point is None:
            out_of_reach.append(end["clean_acc"] < lowest["clean_acc"] - MATCHED_CLEAN)
        else:
            gaps.append(point["clean_acc"] - end["clean_acc"])
    if (gaps and min(gaps) < -MATCHED_CLEAN) or not all(out_of_reach):
        return "loses"
    if out_of_reach:
        return "trade-off"
    if min(gaps) <= MATCHED_CLEAN:
        return "matched"
    return "wins" if min(end["asr"] for end in tuned) <= KEPT_ASR else "wins, but every end keeps the backdoor"


def curve_against_fine_tuning(cell: str, size: int, rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    """One line of the curve comparison: for each fine-tuned end, the path's matched point, then the verdict."""
    tuned = fine_tuned_ends(results)
    pairs = []
    for end in tuned:
        point = matched_point(rows, end)
        found = "none" if point is None else f"{point['clean_acc']:.3f} / {point['asr']:.3f} (t={point['t']:g})"
        pairs.append(f"end {end['clean_acc']:.3f} / {end['asr']:.3f} -> path {found}")
    return f"- {cell} N={size}: " + "; ".join(pairs) + ": " + curve_verdict(rows, tuned)


def tally(outcomes: list[tuple[int, int, str]]) -> list[str]:
    """How often the path won, lost or traded off, per budget (epochs) and N."""
    counts = Counter(outcomes)
    keys = sorted({(epochs, size) for epochs, size, _ in outcomes}, key=lambda key: (key[0], -key[1]))
    return [
        f"- {epochs} epochs, N={size}: "
        + ", ".join(f"{outcome} {n}" for (e, z, outcome), n in sorted(counts.items()) if (e, z) == (epochs, size))
        for epochs, size in keys
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and test/ class folders")
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10_grid"))
    parser.add_argument("--cells", nargs="+", help="cells to run, in this order (e.g. vgg_small_bn-patch-r10)")
    parser.add_argument("--epochs", type=int, help="epochs of every repair stage (default: the grid's Budget)")
    parser.add_argument("--num-points", type=int, help="evaluated t of the path (default: the grid's Budget)")
    grid.add_training_options(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=SIZES, help="the N to run")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS, help="what to run at every N")
    parser.add_argument("--smoke", action="store_true", help="a tiny budget that only checks the chain runs")
    parser.add_argument("--table", action="store_true", help="print the table of the finished cells and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(two_model_table(args.out))
        for extra in (purification_table(args.out), path_points_table(args.out)):
            if extra:
                print("\n" + extra)
        return 0
    if not args.cells:
        parser.error("--cells: name the cells to run (e.g. vgg_small_bn-patch-r10)")
    torch.set_num_threads(1)
    budget = grid.with_training(grid.Budget(512, 1, 300, 1, 256, 200, 3) if args.smoke else grid.Budget(), args)
    if args.epochs is not None:
        budget = dataclasses.replace(budget, repair_epochs=args.epochs)
    if args.num_points is not None:
        budget = dataclasses.replace(budget, num_points=args.num_points)
    known = {grid.cell_name(*cell): cell for cell in grid.cells()}
    unknown = [name for name in args.cells if name not in known]
    if unknown:
        parser.error(f"--cells: unknown cell {unknown[0]!r}; one of {', '.join(known)}")
    train, test = grid.load_data(args.data, args.out / "cache")
    for name in args.cells:
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        run_two_model(*known[name], train, test, args.out, budget, tuple(args.sizes), tuple(args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
