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
from collections.abc import Iterator
from contextlib import contextmanager
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
from mcrobust.pipeline.second_end import AUGMENTED, fresh_copy, second_end_system
from mcrobust.pipeline.settings import BEFORE_IT_EXISTED, ChainSettings
from mcrobust.systems import CurveSystem
from mcrobust.threats.triggers import Trigger
from mcrobust.utils.schedules import PaperSchedule

STEPS = "steps"


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
        current = {"ends": ends, **self.settings.training_settings(one_model=ends == "one")}
        current |= {"inputs": inputs} if inputs is not None else {}
        if record.is_file():
            saved = json.loads(record.read_text())
            # a setting added since that folder was written counts as what was trained before it existed
            defaults = ChainSettings().training_settings(one_model=ends == "one") | BEFORE_IT_EXISTED
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
        if settings.path_distill == "auto":
            raise ConfigError(
                "path_distill 'auto' is resolved for one or two models by mcrobust.repair; give a number here"
            )
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
            distill=float(settings.path_distill),
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
