"""The repair chain in one process: (second end) -> path -> evaluate every t -> choose t -> export.

`mcrobust.repair()` and `mcrobust repair` run these stages through the same systems and callbacks as the
`mcrobust fit|test` commands (EndpointSystem, CurveSystem, PathEvaluation), without re-importing the stack per
step. With one model the second end is trained by a recipe of `mcrobust.pipeline.second_end` (docs/one_model.md). Every
stage leaves its artefact in `<out>/steps/`; a killed run resumes from the last finished stage (and from Lightning's
`last.ckpt` inside an unfinished one), and refuses a folder trained with other settings.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from mcrobust.analysis.evaluation import PointEvaluator
from mcrobust.callbacks.path_evaluation import PathEvaluation
from mcrobust.data.bonafide import split_stratified
from mcrobust.data.datamodules import BonafideSettings, PoisonSettings, RobustDataModule
from mcrobust.data.sources import ArraySplit
from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import save_weights
from mcrobust.io.tables import write_json
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.paths.selection import select_t
from mcrobust.pipeline.second_end import AUGMENTED, SECOND_ENDS, fresh_copy, second_end_system
from mcrobust.systems import CurveSystem
from mcrobust.threats.triggers import Trigger
from mcrobust.utils.schedules import PaperSchedule

STEPS = "steps"
SELECTIONS = ("auto", "middle", "far", "scan", "veto")
SCANNED = ("scan", "veto")
"""Selections that run the trigger-free suspect scan (`mcrobust.pipeline.scan`), one-model repairs only."""
UNTRAINED = ("num_points", "selection_tolerance", "selection", "accelerator", "progress")
"""ChainSettings that change no trained weights: free to differ when a repair resumes."""


RECIPE_ONLY = {
    "superfinetune_lr": ("superfinetune", "scratch"),
    "fst_alpha": ("fst",),
    "unlearn_eps": ("unlearn",),
    "unlearn_eps_final": ("unlearn",),
    "unlearn_steps": ("unlearn",),
    "unlearn_suspect": ("unlearn",),
}
"""Settings that shape the trained second end of these recipes only (the scan reads unlearn_eps and unlearn_steps
too, but trains nothing): a repair of another recipe resumes whatever their values, or their defaults, became."""

BEFORE_IT_EXISTED = {"unlearn_suspect": False, "unlearn_eps": 3.0}
"""What a repair folder written before a setting existed was trained with, where that differs from its default
(unlearn_eps: the radius of every unlearning before 'auto' became the default)."""


@dataclass
class ChainSettings:
    """The paper's repair settings (Zhao et al. 2020) as defaults; `epochs` scales the budget.

    Args:
        epochs: epochs of the fine-tuning and of the path (the paper: 100 each).
        epoch_samples: training samples per epoch, tiled from the bonafide set (the paper: 10,000).
        batch_size: training batch size (the paper: 128).
        path_lr: SGD learning rate of the path (the paper: 0.01, momentum 0.9).
        finetune_lr: SGD learning rate of the fine-tuned second end (the paper: 0.015; also 'reinit_head' and 'fst').
        weight_decay: L2 coefficient (on w(t) for the path, on the weights for fine-tuning; the paper: 1e-4).
        kind: 'bezier' or 'polychain'.
        num_bends: control points of the curve, endpoints included (the paper: 3).
        num_points: evaluated t values, evenly spaced over [0, 1].
        holdout: fraction of the clean images held out (never trained on) to choose t.
        selection_tolerance: the chosen t keeps holdout accuracy within this of the best interior point; None:
            one standard error of the best on the holdout images (at least one image).
        seed: seed of the split, the training and the evaluation.
        second_end: how a one-model repair trains the end the path joins to the model, on the bonafide-train part
            with the same budget (`mcrobust.pipeline.second_end`; default 'unlearn', chosen on the CIFAR-10 grid
            of docs/results.md): 'finetune' (the paper's fine-tuned copy),
            'superfinetune' (one high-lr cycle with crop+flip, Sha et al. 2022), 'reinit_head' (head re-initialised,
            then fine-tuned), 'fst' (Feature Shift Tuning, Min et al. 2023), 'unlearn' (adversarial unlearning of
            the strongest universal perturbation, after Zeng et al. 2022) or 'scratch' (a fresh net, trained like
            'superfinetune'). Unused with a second model.
        augment: crop+flip augmentation of the second end's training images; None: the recipe's own choice (on
            for 'superfinetune' and 'scratch', off for the others).
        superfinetune_lr: peak learning rate of the one-cycle schedule of 'superfinetune' and 'scratch'.
        fst_alpha: weight of FST's penalty alpha <W, W_0> between the new and the tampered head (Min et al.: 0.2).
        unlearn_eps: L2 radius, in pixel units, of the universal perturbations 'unlearn' trains against and the
            suspect scan searches (on CIFAR-10 a 3x3 white patch changes an image by 2.4 on average, a 4x4
            checkerboard by 3.9), or 'auto' (the default): the largest of 3, 2, 1.5 and 1 (times the square root of
            the pixel count over 32x32) at which the model's median class reach in the suspect scan is at most 0.6
            (`mcrobust.pipeline.scan.resolve_radius`). On the CIFAR-10 grid 'auto' kept 3 on the models trained on
            48,000 images and took 2 on the converged ones, where 3 cost 4-5 points or kept a checkerboard backdoor
            unwarned and 1.5 kept it on the undertrained VGGs (docs/results.md, 2026-12-07). A number fixes the
            radius; scale it with the square root of the pixel count for images larger than 32x32.
        unlearn_eps_final: the radius at the last epoch of 'unlearn', reached linearly from unlearn_eps (the scan
            keeps unlearn_eps); None: unlearn_eps throughout.
        unlearn_steps: ascent steps of that perturbation per training step ('unlearn' costs 1 + this many times
            the gradient work of fine-tuning).
        unlearn_suspect: 'unlearn' also trains against the targeted universal perturbation toward the class it
            reaches most easily, re-scanned every epoch (Neural Cleanse's suspect; about twice the cost). None (the
            default): on with 'unlearn' (chosen on the CIFAR-10 grid, docs/results.md), off with the others.
        path_augment: train the path on crop+flip augmented bonafide images.
        selection: which interior t within the tolerance is exported: 'middle' (closest to 0.5, the paper's rule),
            'far' (farthest from the given model: safer where the backdoor dies late along a one-model path, at a
            cost in clean accuracy when the holdout cannot tell the points apart; docs/one_model.md), 'scan' (the
            point nearest the model among those the holdout accepts, widened once to twice the tolerance, where the
            model's suspect class no longer stands out in a trigger-free scan: `mcrobust.analysis.suspect`; the
            scan's radius and steps are unlearn_eps and unlearn_steps), 'veto' (the middle point, or the next one
            away from the model that the holdout accepts, widened once, where that scan no longer finds the suspect:
            the scan only vetoes), or 'auto': 'veto' with one model (chosen on held-out CIFAR-10 cells,
            docs/results.md), 'middle' with two.
        accelerator: Lightning accelerator ('auto', 'cpu', 'gpu').
        progress: show progress bars.
    """

    epochs: int = 100
    epoch_samples: int | None = 10_000
    batch_size: int = 128
    path_lr: float = 0.01
    finetune_lr: float = 0.015
    weight_decay: float = 1e-4
    kind: str = "bezier"
    num_bends: int = 3
    num_points: int = 11
    holdout: float = 0.1
    selection_tolerance: float | None = None
    seed: int = 0
    second_end: str = "unlearn"
    augment: bool | None = None
    superfinetune_lr: float = 0.05
    fst_alpha: float = 0.2
    unlearn_eps: float | str = "auto"
    unlearn_eps_final: float | None = None
    unlearn_steps: int = 5
    unlearn_suspect: bool | None = None
    path_augment: bool = False
    selection: str = "auto"
    accelerator: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or (self.epoch_samples is not None and self.epoch_samples < 1):
            raise ConfigError("epochs, batch_size and epoch_samples must be >= 1")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.second_end not in SECOND_ENDS:
            raise ConfigError(f"second_end must be one of {', '.join(SECOND_ENDS)}, got {self.second_end!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.superfinetune_lr <= 0 or self.fst_alpha < 0:
            raise ConfigError("superfinetune_lr must be > 0 and fst_alpha >= 0")
        radius = self.unlearn_eps
        finite_radius = not isinstance(radius, (str, bool)) and 0 < radius < math.inf  # nan fails both comparisons
        if (radius != "auto" and not finite_radius) or self.unlearn_steps < 1:
            raise ConfigError("unlearn_eps must be > 0 (or 'auto') and unlearn_steps >= 1")
        if self.unlearn_eps_final is not None and not 0 < self.unlearn_eps_final < math.inf:
            raise ConfigError(f"unlearn_eps_final must be > 0 (or unset), got {self.unlearn_eps_final}")
        if self.unlearn_suspect is None:  # on for the recipe it belongs to, off for the others
            self.unlearn_suspect = self.second_end == "unlearn"
        if self.unlearn_suspect and self.second_end != "unlearn":
            raise ConfigError(
                f"unlearn_suspect needs second_end 'unlearn', got {self.second_end!r}: drop one of the two settings"
            )

    def resolve_selection(self, one_model: bool) -> None:
        """Replace 'auto' by the rule for this repair: 'veto' with one model, 'middle' (the paper's) with two.

        'scan' and 'veto' look for the first model's suspect class only, so they are refused with two tampered models.
        """
        if self.selection in SCANNED and not one_model:
            raise ConfigError(
                f"selection {self.selection!r} scans the one given model; with a second model use 'middle' (the "
                "paper's) or 'auto'"
            )
        if self.selection == "auto":
            self.selection = "veto" if one_model else "middle"

    def training_settings(self) -> dict[str, Any]:
        """The settings that shape the trained stages: a resumed repair must have the same ones."""
        return {
            key: getattr(self, key)
            for key in self.__dataclass_fields__
            if key not in UNTRAINED and self.second_end in RECIPE_ONLY.get(key, (self.second_end,))
        }


def repair_data(
    clean: ArraySplit,
    evaluation: ArraySplit | None,
    settings: ChainSettings,
    trigger: Trigger | None = None,
    target: int | None = None,
) -> RobustDataModule:
    """The data module of a repair: `clean` split (seeded, stratified) into bonafide-train and holdout.

    Without an evaluation set the reported metrics are measured on the holdout (the images that also choose t).
    """
    num_classes = len(clean.classes)
    holdout_size = max(num_classes, round(settings.holdout * len(clean.labels)))
    if len(clean.labels) - holdout_size < num_classes:
        raise ConfigError(f"--clean holds {len(clean.labels)} images: too few to train on and hold out per class")
    train, held = split_stratified(clean.labels, len(clean.labels) - holdout_size, seed=settings.seed)
    if evaluation is None:
        evaluation = ArraySplit(clean.images[held], clean.labels[held], clean.classes)
    elif evaluation.classes != clean.classes and len(evaluation.classes) != num_classes:
        raise ConfigError(f"--eval has classes {evaluation.classes}, --clean {clean.classes}; use the same classes")
    poison = None
    if trigger is not None:
        if target is None:
            raise ConfigError("a trigger needs its target label: set 'target:' in the --trigger YAML")
        poison = PoisonSettings(trigger=trigger, target=int(target), rate=0.0)  # type: ignore[arg-type]
    datamodule = RobustDataModule(
        dataset="image_folder",
        batch_size=settings.batch_size,
        augment=False,
        train_on="bonafide",
        bonafide=BonafideSettings(fraction=1.0, seed=settings.seed, holdout_size=len(held)),
        split_seed=settings.seed,
        epoch_samples=settings.epoch_samples,
        poison=poison,
    )
    datamodule.given_splits = (clean, evaluation)
    datamodule.bonafide_parts = (train, held)
    return datamodule


class RepairPathEvaluation(PathEvaluation):
    """`PathEvaluation` whose held-out rule prefers the interior t closest to `target` (1.0: farthest from t=0).

    Args:
        target: the preferred t among the points within the tolerance (0.5: the paper's; 1.0: a one-model repair,
            whose only tampered end is t=0).
        **kwargs: `PathEvaluation`'s arguments.
    """

    def __init__(self, target: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target

    def choose(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if len(rows) < 3 or all(row.get("holdout_acc") is None for row in rows):
            return super().choose(rows)
        count = getattr(self, "holdout_count", None)
        result = select_t(rows, tolerance=self.selection_tolerance, target=self.target, count=count)
        return {"selected_t": result.t, "rule": result.rule}


class RepairChain:
    """Runs the stages of one repair in `out`, each resumable.

    Args:
        template: the architecture as mcrobust trains it (the user's net, adapted to pixels in [0,1] and logits).
        datamodule: from :func:`repair_data`.
        settings: the chain's settings.
        out: the output folder (stage artefacts under out/steps).
    """

    def __init__(self, template: nn.Module, datamodule: RobustDataModule, settings: ChainSettings, out: Path) -> None:
        self.template, self.datamodule, self.settings, self.out = template, datamodule, settings, out
        self.steps = out / STEPS
        self.steps.mkdir(parents=True, exist_ok=True)

    # --------------------------------------------------------------------------------------------- stages
    def save_endpoint(self, name: str, model: nn.Module) -> Path:
        """Write an input endpoint's weights (the adapted net's keys) as a stage artefact."""
        return save_weights(model.state_dict(), self.steps / f"{name}.safetensors")

    def second_end(self, start: Path) -> Path:
        """One-model protocol: train the second end from the model by `settings.second_end` on bonafide-train.

        Every recipe but 'scratch' fine-tunes the model, and its result is `steps/finetuned.safetensors`.
        """
        recipe = self.settings.second_end
        done = self.steps / ("scratch.safetensors" if recipe == "scratch" else "finetuned.safetensors")
        if done.is_file():
            return done
        if recipe == "scratch":
            torch.manual_seed(self.settings.seed)  # the fresh initialisation is part of the seeded run
            start = save_weights(fresh_copy(self.template).state_dict(), self.steps / "scratch_init.safetensors")
        system = second_end_system(recipe, self.template, str(start), self.settings)
        augment = recipe in AUGMENTED if self.settings.augment is None else self.settings.augment
        self.fit(system, recipe, augment=augment)
        return save_weights(system.net.state_dict(), done)

    def check_resumable(self, ends: str, inputs: str | None = None) -> None:
        """Refuse to resume a repair in `out` that was trained with other settings or inputs (its stages would be
        reused): `inputs` is :func:`inputs_fingerprint` of the given models and clean images."""
        record = self.steps / "chain_settings.json"
        current = {"ends": ends, **self.settings.training_settings()}
        current |= {"inputs": inputs} if inputs is not None else {}
        if record.is_file():
            saved = json.loads(record.read_text())
            # a setting added since that folder was written counts as what was trained before it existed
            defaults = ChainSettings().training_settings() | BEFORE_IT_EXISTED
            changed = sorted(key for key in current if saved.get(key, defaults.get(key)) != current[key])
            if "inputs" in changed:
                raise ConfigError(
                    f"{self.out} holds a repair of other models or other clean images (its stages would be reused); "
                    "use another out folder"
                )
            if changed:
                first = changed[0]
                raise ConfigError(
                    f"{self.out} holds a repair trained with {first}={saved.get(first, defaults.get(first))!r}, "
                    f"this one has {current[first]!r}; use another out folder, or the same settings to resume it"
                )
        else:
            write_json(record, current)

    def curve_system(self, start: Path | None = None, end: Path | None = None) -> CurveSystem:
        """The path's system: endpoints from files to train a new path, or none to restore a trained one."""
        settings = self.settings
        return CurveSystem(
            copy.deepcopy(self.template),
            start=None if start is None else str(start),
            end=None if end is None else str(end),
            kind=settings.kind,  # type: ignore[arg-type]
            num_bends=settings.num_bends,
            optimizer=partial(torch.optim.SGD, lr=settings.path_lr, momentum=0.9),
            scheduler=PaperSchedule,
            weight_decay=settings.weight_decay,
            seed=settings.seed,
        )

    def train_path(self, start: Path, end: Path) -> Path:
        """Train the curve's free bends on the bonafide-train part; return the trained path's checkpoint."""
        done = self.steps / "path" / "final.ckpt"
        if not done.is_file():
            trainer = self.fit(self.curve_system(start, end), "path", augment=self.settings.path_augment)
            trainer.save_checkpoint(done)
        return done

    def evaluate(self, path: Path) -> tuple[CurveSystem, PathEvaluation]:
        """Evaluate every t of the trained path, choose t on the holdout (rows land in out/path_metrics.csv)."""
        evaluation = RepairPathEvaluation(
            target=1.0 if self.settings.selection in ("far", "scan") else 0.5,  # 'veto' starts at the middle
            num_points=self.settings.num_points,
            bn_data="bonafide",
            selection_tolerance=self.settings.selection_tolerance,
            dirpath=str(self.out),
            evaluator=PointEvaluator(seed=self.settings.seed),
        )
        system = self.curve_system()
        trainer = self.trainer("evaluate", callbacks=[evaluation], max_epochs=1)
        trainer.test(system, datamodule=self.datamodule, ckpt_path=str(path), verbose=False)
        return system, evaluation

    def point(self, system: CurveSystem, t: float) -> nn.Module:
        """The model at t with its BN statistics recomputed on the bonafide-train part."""
        return self.with_bonafide_bn(system.curve.materialize(t))

    def with_bonafide_bn(self, model: nn.Module) -> nn.Module:
        """`model` on the CPU, in eval mode, its BN statistics recomputed on the bonafide-train part (in place)."""
        model = model.cpu()
        recompute_bn(model, self.datamodule.bn_dataloader("bonafide"))
        return model.eval()

    # -------------------------------------------------------------------------------------------- Lightning
    def fit(self, system: pl.LightningModule, stage: str, augment: bool = False) -> pl.Trainer:
        """Train `system` for `settings.epochs` on the bonafide-train part (crop+flip with `augment`), resumable."""
        folder = self.steps / stage
        last = folder / "last.ckpt"
        checkpoint = ModelCheckpoint(dirpath=str(folder), save_last=True, save_top_k=0)
        trainer = self.trainer(stage, callbacks=[checkpoint], max_epochs=self.settings.epochs)
        pl.seed_everything(self.settings.seed, verbose=False)
        datamodule = self.datamodule
        if augment:  # the same images and parts, augmented; evaluation and BN recompute keep the plain module
            datamodule = copy.copy(self.datamodule)
            datamodule.augment = True
        trainer.fit(system, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
        return trainer

    def trainer(self, stage: str, callbacks: list[Any], max_epochs: int) -> pl.Trainer:
        logger = TensorBoardLogger(str(self.out), name="lightning_logs", version=stage)
        return pl.Trainer(
            accelerator=self.settings.accelerator,
            devices=1,
            max_epochs=max_epochs,
            logger=logger,
            callbacks=callbacks,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_progress_bar=self.settings.progress,
            enable_model_summary=False,
            inference_mode=False,
            log_every_n_steps=10,
        )


@contextmanager
def muted_start_up_notes() -> Iterator[None]:
    """Keep Lightning's start-up notes (GPU available, tips) out of a repair's output; restore the levels after."""
    import logging

    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
