"""`ExportPoint`: save the chosen point of a trained path as a plain, loadable model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from mcrobust.data.datamodules import datamodule_of
from mcrobust.errors import ConfigError
from mcrobust.paths.export import export_point, net_config


class ExportPoint(Callback):
    """Writes `repaired_t<t>.pt`, `.safetensors` and `.json` for the point at t (BN recomputed on bonafide data).

    t is `t` when given, otherwise the point `PathEvaluation` chose with bonafide data only (it chooses when the test
    starts, so the test metrics describe this point too). Runs at the end of fit (explicit t only) and of test.

    Args:
        t: the point to export; None uses PathEvaluation's selection.
        dirpath: output folder (default: the run's log dir).
        bn_data: recompute BN on the 'bonafide' data or the full clean 'train' split.
        filename: file name without extension; `{t}` is replaced by t (default `repaired_t{t}`, e.g. repaired_t0.400).
    """

    def __init__(
        self,
        t: float | None = None,
        dirpath: str | None = None,
        bn_data: Literal["bonafide", "train"] = "bonafide",
        filename: str = "repaired_t{t}",
    ) -> None:
        if t is not None and not 0.0 <= t <= 1.0:
            raise ConfigError(f"ExportPoint t must be in [0, 1], got {t}")
        self.t, self.dirpath, self.bn_data, self.filename = t, dirpath, bn_data, filename
        self.paths: dict[str, Path] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.t is not None:
            self.export(trainer, pl_module, self.t)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = self.t if self.t is not None else getattr(pl_module, "selected_t", None)
        if t is None:
            rank_zero_warn(
                "ExportPoint: no t to export; set its t or add PathEvaluation with data.bonafide.holdout_size > 0"
            )
            return
        measured = getattr(pl_module, "val_t", t)
        if measured != t:
            rank_zero_warn(f"ExportPoint: exporting t={t}, but the test metrics measured t={measured} (model.val_t)")
        self.export(trainer, pl_module, t)

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, t: float) -> None:
        curve = getattr(pl_module, "curve", None)
        if curve is None:
            raise ConfigError("ExportPoint needs a CurveSystem (a model with a path)")
        directory = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)  # log_dir: every rank asks
        if not trainer.is_global_zero:
            return
        datamodule = datamodule_of(trainer)
        has_data = self.bn_data == "train" or datamodule.bonafide_index is not None
        loader = datamodule.bn_dataloader(self.bn_data) if has_data else None
        config = net_config(curve.template, pl_module.hparams.get("net"))
        extra = {"bn_data": self.bn_data if loader is not None else None, "source": type(pl_module).__name__}
        name = self.filename.replace("{t}", f"{t:.3f}")
        self.paths = export_point(curve, t, loader, directory, config, name=name, extra=extra)
        rank_zero_info(f"ExportPoint: the model at t={t} is in {self.paths['pt']} and {self.paths['safetensors']}")
