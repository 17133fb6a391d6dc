"""Helpers for tests of mcrobust systems and of user code built on them (the `BoringModel` idea of Lightning)."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from torch import nn


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


def fails_in_one_line(capsys: Any, args: list[str], *fragments: str) -> str:
    """Run the `mcrobust` CLI in-process and check the user-error contract; return the error line.

    Exit status 2, the last stderr line `mcrobust: error: ...` holding every fragment, and no traceback.

    Args:
        capsys: pytest's capsys fixture.
        args: the command line after `mcrobust`.
        *fragments: texts the error line must contain (the setting it names, the fix).
    """
    import pytest

    from mcrobust.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("mcrobust: error:"), err[-2000:]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def small_bn_net(num_classes: int = 10) -> nn.Sequential:
    """Two conv blocks with BatchNorm (so eval mode and BN statistics matter) and a linear head, for 1x8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, num_classes),
    )
