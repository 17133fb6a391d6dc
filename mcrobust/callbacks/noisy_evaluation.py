"""`NoisyEvaluation`: evaluate every draw of the noisy-model baseline (Zhao et al. 2020, §4) and log their spread.

For each of the system's `num_draws` draws: its weights (`NoisySystem.draw`), its BatchNorm statistics recomputed on
the bonafide training images, then the same `PointEvaluator` a point of a path gets, so the baseline and the path
are measured by one piece of code. The system holds the model (endpoints, noise scale, seed); this callback holds
the evaluation loop, as `PathEvaluation` does for a path.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from tqdm.auto import tqdm

from mcrobust.analysis.evaluation import PointEvaluator
from mcrobust.data.datamodules import datamodule_of
from mcrobust.errors import ConfigError
from mcrobust.io.tables import write_csv
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.systems.noisy import NoisySystem

DRAWS_FILE = "noisy_draws.csv"
LOG_NAMES = {"clean_acc": "acc", "clean_loss": "loss"}
"""PointEvaluator columns renamed to the systems' log keys (`test/acc`, `test/loss`); the others keep their name."""


class NoisyEvaluation(Callback):
    """Evaluates a `NoisySystem`'s draws at the end of `mcrobust test` (or validate); logs their mean and std.

    Draw k's BN statistics are recomputed on the bonafide training images (`datamodule.bn_dataloader()`, the full
    set on every rank), then `PointEvaluator` (with the system's `eval_attack`) measures it on the sharded
    evaluation sets and sums over ranks with torchmetrics, so every rank holds the same numbers. Keys: `test/acc`,
    `test/loss`, `test/asr` (with a trigger), `test/robust_acc` and `test/robust_loss` (with `eval_attack`), each
    with `_std` (sample std over draws, ddof=1; 0 for one draw), and `test/num_draws`; `mcrobust validate` logs
    `val/...` alike. Each draw's row is written to `noisy_draws.csv` in the log dir (rank 0). The draws run one after
    another through the system's `net` (one network in memory), which holds the last draw afterwards.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.summary: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, NoisySystem):
            raise ConfigError(
                f"NoisyEvaluation evaluates the draws of a NoisySystem, not a {type(pl_module).__name__}: remove it "
                "from trainer.callbacks or set model.class_path mcrobust.systems.NoisySystem"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate_draws(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluate_draws(trainer, pl_module, "test")

    def evaluate_draws(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        """Draw, recompute BN, evaluate, `num_draws` times; log and return the mean and std of every metric."""
        datamodule = datamodule_of(trainer)
        if datamodule is None or not isinstance(pl_module, NoisySystem):
            raise ConfigError("the noisy baseline runs under `mcrobust test` with the RobustDataModule")
        sets = {name: datamodule.eval_dataloader(data) for name, data in datamodule.eval_datasets().items()}
        bn_loader = datamodule.bn_dataloader()
        evaluator = PointEvaluator(attack=pl_module.eval_attack)
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        rows = []
        for draw in tqdm(range(pl_module.num_draws), desc="noisy draws", disable=not show):
            pl_module.net.load_state_dict(pl_module.draw(draw))
            recompute_bn(pl_module.net, bn_loader, device=pl_module.device)
            rows.append({"draw": draw, **evaluator.evaluate(pl_module.net, sets, device=pl_module.device)})
        self.rows = rows
        self.summary = summarize_draws(rows, stage)
        for key, value in self.summary.items():
            # equal on every rank already; sync_dist averages equal numbers (exact) and keeps Lightning quiet
            pl_module.log(key, value, sync_dist=True, add_dataloader_idx=False)
        self.write_draws(trainer, rows)
        return self.summary

    def write_draws(self, trainer: pl.Trainer, rows: list[dict[str, float]]) -> None:
        """Each draw's metrics to `noisy_draws.csv` in the log dir (rank 0)."""
        folder = trainer.log_dir  # every rank asks: Lightning broadcasts it from rank 0
        if trainer.is_global_zero and folder:
            write_csv(Path(folder) / DRAWS_FILE, rows, list(rows[0]))


def summarize_draws(rows: list[dict[str, float]], stage: str) -> dict[str, float]:
    """`{stage}/{metric}` (mean over draws) and `{stage}/{metric}_std` (ddof=1; 0 for a single draw)."""
    summary: dict[str, float] = {}
    for column in [name for name in rows[0] if name != "draw"]:
        values = torch.tensor([row[column] for row in rows], dtype=torch.float64)
        key = f"{stage}/{LOG_NAMES.get(column, column)}"
        summary[key] = float(values.mean())
        summary[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
    summary[f"{stage}/num_draws"] = float(len(rows))
    return summary
