"""`Speedups`: opt-in channels_last memory format and torch.compile for GPU runs, selectable from the config.

Mixed precision needs no callback: set `trainer.precision: bf16-mixed` (or `16-mixed`). All three change numerics
slightly; PGD and the input Hessian then run in lower precision too.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn


class Speedups(Callback):
    """Convert the system's 4-D weights and input batches to channels_last, and/or compile its net in place.

    `torch.compile` uses `nn.Module.compile()`, which keeps the state_dict keys, so checkpoints and exports stay
    loadable into the bare architecture. Curves are not compiled (functional_call swaps parameters every step).

    Args:
        channels_last: NHWC memory format for conv weights and images (faster convolutions on recent GPUs).
        compile: compile `net` of endpoint-style systems with torch.compile.
        compile_mode: torch.compile mode ('default', 'reduce-overhead', 'max-autotune').
    """

    def __init__(self, channels_last: bool = False, compile: bool = False, compile_mode: str = "default") -> None:
        self.channels_last, self.compile, self.compile_mode = channels_last, compile, compile_mode

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if not self.compile:
            return
        net = getattr(pl_module, "net", None)
        if not isinstance(net, torch.nn.Module):
            rank_zero_warn(f"Speedups: {type(pl_module).__name__} has no plain `net` to compile; left as is")
            return
        net.compile(mode=self.compile_mode)

    def _convert(self, batch: Any) -> None:
        if self.channels_last and isinstance(batch, list) and batch and batch[0].dim() == 4:
            batch[0] = batch[0].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any) -> None:
        self._convert(batch)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._convert(batch)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any) -> None:
        self._convert(batch)
