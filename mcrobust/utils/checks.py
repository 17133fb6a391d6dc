"""Checks of a run's numbers and settings that stop it early and say why.

`require` is the one-line argument check of the package; `check_finite_loss` stops training at the first NaN or
infinite loss and `check_finite` refuses weights that hold one; `check_settings` refuses optimizer arguments that
cannot be right (a negative learning rate or momentum) before anything is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from mcrobust.errors import CheckpointError, ConfigError, MCRobustError


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: an argument check that reads as the condition it demands.

    Args:
        ok: the condition the arguments must meet.
        message: one line naming the setting and the fix, e.g. `eps must be >= 0, got -1`.
    """
    if not ok:
        raise ConfigError(message)


class TrainingDiverged(MCRobustError):
    """The training loss became NaN or infinite: the run cannot recover, so it stops with one line."""


def check_finite_loss(loss: Tensor, step: int) -> None:
    """Raise TrainingDiverged when `loss` holds a NaN or an infinity.

    One `torch.isfinite` reduction; on an accelerator reading the result waits for the step, which the per-step
    metric update (torchmetrics' NaN check) already does, so the guard adds no new synchronisation point.

    Args:
        loss: the training loss of one step (any shape).
        step: the global step, named in the message.

    Raises:
        TrainingDiverged: `training diverged at step N: the loss is nan; ...`.
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    values = loss.detach().flatten()
    value = float(values[~torch.isfinite(values)][0])
    raise TrainingDiverged(
        f"training diverged at step {step}: the loss is {value}; lower the learning rate "
        "(model.init_args.optimizer.init_args.lr) or check the data and the endpoints"
    )


NON_NEGATIVE_OPTIMIZER_ARGUMENTS = ("lr", "momentum", "weight_decay", "eps")


"""torch.optim arguments that torch refuses below 0, only once the optimizer is built (after the run set up)."""


def check_settings(config: Mapping[str, Any]) -> None:
    """Raise ConfigError, naming the key, for settings that torch or Lightning reject only after set-up began.

    Checked on the parsed config, before anything is built or written: every `torch.optim` class's `lr`,
    `momentum`, `weight_decay`, `eps` (>= 0) and `betas` (in [0, 1)), and `trainer.check_val_every_n_epoch`.

    Args:
        config: one subcommand's parsed config as nested dicts (`class_path` / `init_args` for classes).
    """
    trainer = config.get("trainer") or {}
    every = trainer.get("check_val_every_n_epoch") if isinstance(trainer, Mapping) else None
    if isinstance(every, int) and every < 1:
        raise ConfigError(
            f"trainer.check_val_every_n_epoch must be >= 1, got {every}; or null, to validate every "
            "trainer.val_check_interval training batches"
        )
    for key, spec in class_settings(config):
        if str(spec.get("class_path", "")).startswith("torch.optim.") and isinstance(spec.get("init_args"), Mapping):
            _check_optimizer_arguments(spec["init_args"], f"{key}.init_args")


def class_settings(value: Any, key: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(key, mapping) for every `class_path` mapping in nested mappings and sequences."""
    if isinstance(value, Mapping):
        if "class_path" in value:
            yield key, value
        for name, item in value.items():
            yield from class_settings(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from class_settings(item, f"{key}.{index}")


def _check_optimizer_arguments(arguments: Mapping[str, Any], key: str) -> None:
    for name in NON_NEGATIVE_OPTIMIZER_ARGUMENTS:
        value = arguments.get(name)
        if isinstance(value, (int, float)) and not value >= 0:  # `not >=` also catches NaN
            raise ConfigError(f"{key}.{name} must be >= 0, got {value}")
    betas = arguments.get("betas")
    if isinstance(betas, (list, tuple)):
        for index, beta in enumerate(betas):
            if isinstance(beta, (int, float)) and not 0.0 <= beta < 1.0:
                raise ConfigError(f"{key}.betas[{index}] must be in [0, 1), got {beta}")


def check_finite(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError naming the first floating tensor with a NaN or an infinity."""
    for key, value in state_dict.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{source} has NaN or infinite values in {key!r}; the run that wrote it diverged, "
                "use another checkpoint"
            )
