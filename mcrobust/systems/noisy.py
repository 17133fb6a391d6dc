"""`NoisySystem`: the noisy-model baseline (Zhao et al. 2020), the endpoints' midpoint plus Gaussian noise.

Nothing trains: `mcrobust test --config configs/experiments/baseline_noisy_<setting>.yaml` draws `num_draws`
seeded models, recomputes each one's BatchNorm statistics on the bonafide data, evaluates it and logs the mean and
the spread over draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mcrobust.attacks import PGD, AutoAttack
from mcrobust.baselines import draw_generator, noisy_weights
from mcrobust.batchnorm import recompute_bn
from mcrobust.checkpoints import load_weights
from mcrobust.errors import ConfigError
from mcrobust.evaluation import PointEvaluator
from mcrobust.systems.classification import ClassificationSystem
from mcrobust.tables import write_csv

DRAWS_FILE = "noisy_draws.csv"
LOG_NAMES = {"clean_acc": "acc", "clean_loss": "loss"}
"""PointEvaluator columns renamed to the systems' log keys (`test/acc`, `test/loss`); the others keep their name."""


class NoisySystem(ClassificationSystem):
    """Evaluates `num_draws` noisy midpoints of two endpoints and logs `test/<metric>` (mean) and `_std` over draws.

    Draw k is `mcrobust.baselines.noisy_weights(start, end, scale)` from a CPU generator seeded by (seed, k), so
    every rank, device and rerun sees the same weights. Its BN statistics are recomputed on the bonafide training
    images (`datamodule.bn_dataloader()`, the full set on every rank), then `PointEvaluator` measures it on the
    sharded evaluation sets and sums over ranks with torchmetrics: the same code, and so the same numbers, as a
    point of a path. Keys: `test/acc`, `test/loss`, `test/asr` (with a trigger), `test/robust_acc` and
    `test/robust_loss` (with `eval_attack`), each with `_std` (sample std over draws, ddof=1; 0 for one draw).
    Each draw's row is also written to `noisy_draws.csv` in the log dir. The draws run one after another through
    `net` (one network in memory), which holds the last draw afterwards; `mcrobust validate` logs `val/...` alike.

    Args:
        net: the architecture of both endpoints.
        start: weights of the first tampered endpoint (.ckpt, .pt/.pth or .safetensors).
        end: weights of the second tampered endpoint.
        scale: multiplies the noise std |w2 - w1| / 2 (the paper: 1).
        num_draws: noisy models to evaluate (the paper: about 20).
        seed: seed of the draws.
        eval_attack: attack for `test/robust_acc` and `robust_loss` (PGD or AutoAttack); None: no attack.
    """

    def __init__(
        self,
        net: nn.Module,
        start: str | None = None,
        end: str | None = None,
        scale: float = 1.0,
        num_draws: int = 20,
        seed: int = 0,
        eval_attack: PGD | AutoAttack | None = None,
    ) -> None:
        super().__init__(net, eval_attack=eval_attack)
        if num_draws < 1:
            raise ConfigError(f"model.num_draws must be >= 1, got {num_draws}")
        if scale < 0:
            raise ConfigError(f"model.scale must be >= 0, got {scale}")
        self.start, self.end = start, end
        self.scale, self.num_draws, self.seed = scale, num_draws, seed
        self.evaluator = PointEvaluator(attack=eval_attack)
        self.endpoints: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self.draw_rows: list[dict[str, float]] = []
        self.summary: dict[str, float] = {}
        self.save_plain_hyperparameters()

    def setup(self, stage: str) -> None:
        if stage not in ("test", "validate"):
            raise ConfigError(
                "the noisy baseline has nothing to train or predict: evaluate it with "
                "`mcrobust test --config <file>` (model.init_args.start and end name the endpoints)"
            )
        super().setup(stage)
        if not self.start or not self.end:
            raise ConfigError(
                "the noisy baseline needs both endpoints: set model.init_args.start and model.init_args.end"
            )
        self.endpoints = load_weights(self.start, self.net), load_weights(self.end, self.net)

    # ------------------------------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing per batch: every draw is evaluated in full at the end of the epoch."""

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing per batch: every draw is evaluated in full at the end of the epoch."""

    def on_validation_epoch_end(self) -> None:
        self.evaluate_draws("val")

    def on_test_epoch_end(self) -> None:
        self.evaluate_draws("test")

    def evaluate_draws(self, stage: str) -> dict[str, float]:
        """Draw, recompute BN, evaluate, `num_draws` times; log and return the mean and std of every metric."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or self.endpoints is None:
            raise ConfigError("the noisy baseline runs under `mcrobust test` with the RobustDataModule")
        sets = {name: datamodule.eval_dataloader(data) for name, data in datamodule.eval_datasets().items()}
        bn_loader = datamodule.bn_dataloader()
        parameters = {name for name, _ in self.net.named_parameters()}
        show = self.trainer.is_global_zero and self.trainer.progress_bar_callback is not None
        rows = []
        for draw in tqdm(range(self.num_draws), desc="noisy draws", disable=not show):
            generator = draw_generator(self.seed, draw)
            state = noisy_weights(*self.endpoints, scale=self.scale, generator=generator, parameters=parameters)
            self.net.load_state_dict(state)
            recompute_bn(self.net, bn_loader, device=self.device)
            rows.append({"draw": draw, **self.evaluator.evaluate(self.net, sets, device=self.device)})
        self.draw_rows = rows
        self.summary = summarize_draws(rows, stage)
        for key, value in self.summary.items():
            # equal on every rank already; sync_dist averages equal numbers (exact) and keeps Lightning quiet
            self.log(key, value, sync_dist=True, add_dataloader_idx=False)
        self.write_draws(rows)
        return self.summary

    def write_draws(self, rows: list[dict[str, float]]) -> None:
        """Each draw's metrics to `noisy_draws.csv` in the log dir (rank 0)."""
        folder = self.trainer.log_dir
        if self.trainer.is_global_zero and folder:
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
