"""Helpers for tests of mcrobust systems and of user code built on them (the `BoringModel` idea of Lightning)."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl


def quiet_trainer(root: str | os.PathLike[str] | None = None, **overrides: Any) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or summary; gradients allowed in evaluation.

    Args:
        root: default_root_dir (None: Lightning's default, the working directory).
        **overrides: any other Trainer argument; it replaces the quiet default of the same name.
    """
    settings: dict[str, Any] = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        inference_mode=False,  # attacks and input Hessians in validation/test need gradients
    )
    if root is not None:
        settings["default_root_dir"] = str(root)
    return pl.Trainer(**{**settings, **overrides})
