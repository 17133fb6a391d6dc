"""The second end of a one-model repair: how the copy that the path joins to the given model is trained.

The paper (Zhao et al. 2020) fine-tunes the model on the bonafide data; on backdoored models that keep their backdoor
through fine-tuning, both ends then sit in one basin that carries it and no t of the path is clean (issue 14). The
other recipes move the second end out of that basin with the same data and budget (epochs x epoch_samples on the
bonafide-train part, never the holdout):

- ``finetune``: the paper's fine-tuned copy (SGD at `finetune_lr`, the paper's schedule).
- ``superfinetune``: super-fine-tuning (Sha et al. 2022): one high-learning-rate cycle (peak `superfinetune_lr`)
  with crop+flip augmentation.
- ``reinit_head``: the head (last nn.Linear) re-initialised, then fine-tuned at `finetune_lr` (FST's "FT-init").
- ``fst``: Feature Shift Tuning (Min et al. 2023): ``reinit_head`` plus the penalty `fst_alpha` <W, W_0> that
  pushes the new head away from the tampered one, with a cosine schedule as in its code.
- ``unlearn``: adversarial unlearning (after I-BAU, Zeng et al. 2022): fine-tuning at `finetune_lr` (cosine) on each
  batch and on the batch plus its universal perturbation (L2 radius `unlearn_eps`), with true labels; with
  `unlearn_suspect`, also the targeted one toward the class it reaches most easily (Neural Cleanse, Wang et al. 2019);
  with `unlearn_eps_final`, the radius shrinks to it over the epochs.
- ``scratch``: a net of the same architecture trained from a fresh initialisation with the ``superfinetune``
  optimizer, schedule and augmentation.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from torch import nn

from mcrobust.errors import ConfigError
from mcrobust.systems import EndpointSystem
from mcrobust.systems.feature_shift import FeatureShiftSystem
from mcrobust.systems.unlearning import UnlearningSystem
from mcrobust.utils.schedules import OneCycleSchedule, PaperSchedule

SECOND_ENDS = ("finetune", "superfinetune", "reinit_head", "fst", "unlearn", "scratch")
"""The recipes `ChainSettings.second_end` accepts."""

AUGMENTED = ("superfinetune", "scratch")
"""Recipes that train on crop+flip augmented bonafide images."""


def fresh_copy(template: nn.Module) -> nn.Module:
    """A copy of the architecture with every layer re-initialised (its `reset_parameters`), BN statistics reset."""
    net = copy.deepcopy(template)
    for module in net.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and module is not net:
            reset()
    return net


def second_end_system(recipe: str, template: nn.Module, start: str, settings: Any) -> EndpointSystem:
    """The system that trains the second end by `recipe`, starting from the weights file `start`.

    Args:
        recipe: one of `SECOND_ENDS`.
        template: the architecture as mcrobust trains it (pixels in, logits out).
        start: the given model's weights; for ``scratch``, a fresh initialisation (:func:`fresh_copy`) saved to a file.
        settings: the chain's settings (`ChainSettings`: learning rates, epochs, weight decay, fst_alpha, unlearn_*).
    """
    net = copy.deepcopy(template)
    sgd = partial(torch.optim.SGD, momentum=0.9, weight_decay=settings.weight_decay)
    if recipe == "finetune":
        optimizer = partial(sgd, lr=settings.finetune_lr)
        return EndpointSystem(net, optimizer=optimizer, scheduler=PaperSchedule, init_weights=start)
    if recipe in ("superfinetune", "scratch"):
        optimizer = partial(sgd, lr=settings.superfinetune_lr)
        scheduler = OneCycleSchedule(settings.superfinetune_lr)
        return EndpointSystem(net, optimizer=optimizer, scheduler=scheduler, init_weights=start)
    cosine = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max(settings.epochs, 1))
    optimizer = partial(sgd, lr=settings.finetune_lr)
    if recipe == "unlearn":
        if settings.unlearn_eps == "auto":
            raise ConfigError(
                "unlearn_eps 'auto' is resolved on the model by mcrobust.repair (pipeline.scan.resolve_radius); "
                "give a number to train an unlearned end on its own"
            )
        return UnlearningSystem(
            net,
            optimizer,
            cosine,
            init_weights=start,
            eps=settings.unlearn_eps,
            eps_final=settings.unlearn_eps_final,
            steps=settings.unlearn_steps,
            suspect=settings.unlearn_suspect,
        )
    alpha = settings.fst_alpha if recipe == "fst" else 0.0
    return FeatureShiftSystem(net, optimizer=optimizer, scheduler=cosine, init_weights=start, alpha=alpha)
