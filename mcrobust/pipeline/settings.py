"""The settings of one repair (`ChainSettings`): the paper's defaults, the one-model recipes' knobs, and which of
them a resumed repair must share with the folder it resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mcrobust.errors import ConfigError
from mcrobust.pipeline.second_end import SECOND_ENDS

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

SECOND_END_ONLY = ("second_end", "augment", "finetune_lr", *RECIPE_ONLY)
"""Settings of the trained second end only: a path between two given models trains none, so they are free to differ
when it resumes (a two-model folder written when unlearn_eps defaulted to 3 resumes under 'auto')."""

BEFORE_IT_EXISTED = {"unlearn_suspect": False, "unlearn_eps": 3.0, "path_distill": 0.0}
"""What a repair folder written before a setting existed was trained with, where that differs from its default
(unlearn_eps: the radius of every unlearning before 'auto' became the default; path_distill: the paper's objective)."""

TWO_MODEL_DISTILL = 4.0
"""The distillation weight 'auto' gives a path between two models (chosen on the converged CIFAR-10 cells,
docs/results.md, 2026-12-07); a one-model path keeps the paper's objective (0): distilled from the model and its
unlearned end, the exported point moved by -1.5 to +1.0 points on five converged cells (docs/results.md)."""


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
        path_distill: weight of a distillation term in the path's loss: every point is also pulled toward the two
            endpoints' mean predictions on the same clean images (`CurveSystem(distill=...)`, temperature 4);
            0 is the paper's objective. 'auto' (the default): `TWO_MODEL_DISTILL` with a second model, where it
            lifted the middle of the path on every converged CIFAR-10 cell, 0 with one model.
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
    path_distill: float | str = "auto"
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
        self._check_strengths()
        if self.unlearn_suspect is None:  # on for the recipe it belongs to, off for the others
            self.unlearn_suspect = self.second_end == "unlearn"
        if self.unlearn_suspect and self.second_end != "unlearn":
            raise ConfigError(
                f"unlearn_suspect needs second_end 'unlearn', got {self.second_end!r}: drop one of the two settings"
            )

    def _check_strengths(self) -> None:
        """The unlearning radius and steps, and the path's distillation weight (nan fails every comparison)."""
        radius = self.unlearn_eps
        finite_radius = not isinstance(radius, (str, bool)) and 0 < radius < math.inf
        if (radius != "auto" and not finite_radius) or self.unlearn_steps < 1:
            raise ConfigError("unlearn_eps must be > 0 (or 'auto') and unlearn_steps >= 1")
        if self.unlearn_eps_final is not None and not 0 < self.unlearn_eps_final < math.inf:
            raise ConfigError(f"unlearn_eps_final must be > 0 (or unset), got {self.unlearn_eps_final}")
        weight = self.path_distill
        if weight != "auto" and (isinstance(weight, (str, bool)) or not 0 <= weight < math.inf):
            raise ConfigError(f"path_distill must be >= 0 (0: off) or 'auto', got {weight!r}")

    def resolve_for(self, one_model: bool) -> None:
        """Replace the 'auto' rule and distillation by this repair's: 'veto' and 0 with one model, 'middle' (the
        paper's) and `TWO_MODEL_DISTILL` with two.

        'scan' and 'veto' look for the first model's suspect class only, so they are refused with two tampered models.
        """
        if self.path_distill == "auto":
            self.path_distill = 0.0 if one_model else TWO_MODEL_DISTILL
        if self.selection in SCANNED and not one_model:
            raise ConfigError(
                f"selection {self.selection!r} scans the one given model; with a second model use 'middle' (the "
                "paper's) or 'auto'"
            )
        if self.selection == "auto":
            self.selection = "veto" if one_model else "middle"

    def training_settings(self, one_model: bool = True) -> dict[str, Any]:
        """The settings that shape the trained stages (with two models, no second end is trained): a resumed repair
        must have the same ones."""
        return {
            key: getattr(self, key)
            for key in self.__dataclass_fields__
            if key not in UNTRAINED
            and self.second_end in RECIPE_ONLY.get(key, (self.second_end,))
            and (one_model or key not in SECOND_END_ONLY)
        }
