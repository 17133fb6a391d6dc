"""`PathEvaluation`: measure every point of a path (Zhao et al. 2020) and write the table, summary and figure.

For each t of a grid: the model at t, its BatchNorm statistics recomputed on the bonafide data (or the full
training split, as the paper's code did), then clean accuracy and loss, attack success rate, injection success,
PGD robust accuracy and loss, and the per-sample input-Hessian top eigenvalue. Rows are written as they finish,
so an interrupted sweep resumes; under DDP every rank evaluates its shard and torchmetrics sums them exactly.

A path is swept when `mcrobust test` starts (`on_test_start`), so the test loop that follows measures the chosen t:
the system's `val_t` is set to it, and the `test/*` metrics in the results box and TensorBoard describe the point
`ExportPoint` writes at the end of the test, not the configured `val_t`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from tqdm.auto import tqdm

from mcrobust.analysis.evaluation import COLUMNS as METRIC_COLUMNS
from mcrobust.analysis.evaluation import COUNT_COLUMNS, PointEvaluator
from mcrobust.analysis.plotting import plot_path
from mcrobust.analysis.statistics import summarize_path
from mcrobust.data.datamodules import datamodule_of
from mcrobust.errors import ConfigError
from mcrobust.io.tables import markdown_table, read_csv, write_csv, write_json
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.paths.selection import select_t
from mcrobust.threats.injection import InjectionSets

METRICS_FILE, SUMMARY_FILE, SETTINGS_FILE, FIGURE_FILE = (
    "path_metrics.csv",
    "path_summary.json",
    "path_settings.json",
    "path_figure.png",
)
COLUMNS = ("t", *METRIC_COLUMNS)  # the agreed path_metrics.csv columns, in order; extras, then counts, follow


def run_title(trainer: pl.Trainer, out: Path) -> str:
    """The run's name for the figure: '<experiment>/<version folder>' of its first named logger, else the folder."""
    for logger in trainer.loggers:
        name, log_dir = getattr(logger, "name", None), getattr(logger, "log_dir", None)
        if name and log_dir:
            return f"{name}/{Path(log_dir).name}"
    return out.name


def t_grid(num_points: int, t_values: Sequence[float] | None) -> list[float]:
    """The evaluated t values: an explicit list, or `num_points` evenly spaced over [0, 1]."""
    values = list(t_values) if t_values else [round(float(t), 6) for t in np.linspace(0.0, 1.0, num_points)]
    if not values or num_points < 1:
        raise ConfigError("PathEvaluation needs num_points >= 1 or a non-empty t_values list")
    bad = [t for t in values if not 0.0 <= t <= 1.0]
    if bad:
        raise ConfigError(f"PathEvaluation t values must lie in [0, 1], got {bad[0]}")
    return values


class PathEvaluation(Callback):
    """Evaluate a path (a `CurveSystem`) or a single model (any other system, a path of one point).

    A path is swept before the test loop, which then measures the selected t (the system's `val_t` is set to it); a
    single model after it. Each row also holds `n_clean` and `n_triggered`, the images measured (the n of an interval).

    Args:
        num_points: evenly spaced t values over [0, 1] (the paper: 11 or 31).
        t_values: explicit t values instead of `num_points`.
        every_n_epochs: also sweep during fit every n epochs (0: only on test).
        bn_data: recompute BN on the 'bonafide' data (faithful to the threat model) or the full clean 'train' split.
        endpoints_as_given: t=0 and t=1 are the endpoint models with their own BN statistics (no recompute).
        evaluator: what is measured at every t (`mcrobust.analysis.evaluation.PointEvaluator`: its attack for
            robust_acc / robust_loss, PGD 8/255 in the paper, its Hessian samples, iterations, tolerance, top k and
            seed); None: clean accuracy and loss and the ASR only.
        injection_sets: `injection_sets.pt` of an error-injection run, measured at every t.
        selection_tolerance: the chosen t keeps held-out bonafide accuracy within this of the best interior point;
            None: one standard error of the best on the held-out images (at least one image).
        selection_t: choose this t explicitly instead of by the rule.
        dirpath: where the table, summary and figure go (default: the run's log dir); a sweep resumes there.
    """

    def __init__(
        self,
        num_points: int = 11,
        t_values: list[float] | None = None,
        every_n_epochs: int = 0,
        bn_data: Literal["bonafide", "train"] = "bonafide",
        endpoints_as_given: bool = True,
        evaluator: PointEvaluator | None = None,
        injection_sets: str | None = None,
        selection_tolerance: float | None = 0.02,
        selection_t: float | None = None,
        dirpath: str | None = None,
    ) -> None:
        self.ts = t_grid(num_points, t_values)
        if every_n_epochs < 0:
            raise ConfigError(f"PathEvaluation every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs, self.bn_data, self.endpoints_as_given = every_n_epochs, bn_data, endpoints_as_given
        self.evaluator = evaluator if evaluator is not None else PointEvaluator()
        self.injection_path = injection_sets
        self.selection_tolerance, self.selection_t = selection_tolerance, selection_t
        self.dirpath = dirpath
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ hooks
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Sweep a path before the test loop and point the system at the selected t (Lightning then runs
        `on_test_epoch_start`, where `CurveSystem` recomputes BN at its `val_t`)."""
        if getattr(pl_module, "curve", None) is not None:
            self.sweep(trainer, pl_module)
            self.measure_selected_point(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "curve", None) is None:
            self.sweep(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.sweep(trainer, pl_module, suffix=f"_epoch{trainer.current_epoch + 1}")
            pl_module.train()

    def measure_selected_point(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Set the system's `val_t` to the selected t, so `test/*` describe the exported point; say which t they are."""
        selected = self.summary.get("selected_t")
        configured = getattr(pl_module, "val_t", None)
        if configured is None:
            return
        if selected is not None:
            pl_module.val_t = selected  # type: ignore[assignment]
            self.warn_if_test_differs(trainer, float(selected))
        if trainer.is_global_zero:
            what = f"the selected t = {selected} (model.val_t was {configured})" if selected is not None else None
            print(f"test/* below measure the point at {what or f'model.val_t = {configured}, no t was selected'}")

    def warn_if_test_differs(self, trainer: pl.Trainer, t: float) -> None:
        """The test loop recomputes BN at t on bonafide data (else train): say when the table measured t otherwise."""
        datamodule = datamodule_of(trainer)
        system_bn = "bonafide" if datamodule.bonafide_index is not None else "train"
        if self.endpoints_as_given and t in (0.0, 1.0):
            rank_zero_warn(f"PathEvaluation: t={t} is an endpoint as given in the table; test/* recompute its BN")
        elif system_bn != self.bn_data:
            rank_zero_warn(
                f"PathEvaluation: bn_data is {self.bn_data!r} but the test loop recomputes BN on {system_bn!r} data, "
                f"so test/* at t={t} differ from the table; set bn_data: {system_bn}"
            )

    # ------------------------------------------------------------------------------------------------ sweep
    def settings(self, trainer: pl.Trainer) -> dict[str, Any]:
        """What was measured and how: written to the summary and used to check that a resume is compatible."""
        datamodule = datamodule_of(trainer)
        evaluator = self.evaluator
        return {
            "t": self.ts,
            "bn_data": self.bn_data,
            "endpoints_as_given": self.endpoints_as_given,
            "attack": repr(evaluator.attack) if evaluator.attack is not None else None,
            "hessian": {
                "samples": evaluator.hessian_samples,
                "iters": evaluator.hessian_iters,
                "tol": evaluator.hessian_tol,
                "top_k": evaluator.hessian_top_k,
                "definition": "per-sample lambda_max of the Hessian of each image's own CE loss w.r.t. its input",
            },
            "injection_sets": self.injection_path,
            "dataset": getattr(datamodule, "dataset", None),
            "eval_size": len(datamodule.eval_datasets()["clean"]),
            "bonafide_size": None if datamodule.bonafide_index is None else len(datamodule.bonafide_index),
            "holdout_size": None if datamodule.bonafide_index is None else len(datamodule.bonafide_dataset("holdout")),
            "seed": evaluator.seed,
        }

    def output_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    def sweep(self, trainer: pl.Trainer, pl_module: pl.LightningModule, suffix: str = "") -> list[dict[str, Any]]:
        """Evaluate every t, writing each row as it finishes; then the summary, figure and table."""
        datamodule = datamodule_of(trainer)
        if datamodule is None:
            raise ConfigError("PathEvaluation needs the RobustDataModule")
        out = self.output_dir(trainer)
        settings = self.settings(trainer)
        curve = getattr(pl_module, "curve", None)
        ts = self.ts if curve is not None else [0.0]
        # rank 0 reads the partial table; every rank must skip the same t values, so it broadcasts them
        rows = trainer.strategy.broadcast(self.resumable_rows(out, settings, suffix) if trainer.is_global_zero else [])
        done = {row["t"] for row in rows}
        injection = self.injection_sets(datamodule)
        sets = self.evaluation_loaders(datamodule)
        holdout = self.holdout_loader(datamodule)
        holdout_evaluator = PointEvaluator(seed=self.evaluator.seed)  # clean accuracy only: no attack, no Hessian there
        progress = tqdm(ts, desc="path", disable=not trainer.is_global_zero or not trainer.progress_bar_callback)
        for index, t in enumerate(progress):
            if t in done:
                continue
            model = self.model_at(pl_module, curve, t, datamodule)
            row = {"t": t, **self.evaluator.evaluate(model, sets, injection, device=pl_module.device, counts=True)}
            if holdout is not None:
                row["holdout_acc"] = holdout_evaluator.evaluate(model, {"clean": holdout}, device=pl_module.device)[
                    "clean_acc"
                ]
            rows.append(row)
            rows.sort(key=lambda r: r["t"])
            if trainer.is_global_zero:
                self.write_rows(out, rows, settings, suffix)
                self.log_row(trainer, index, row, suffix)
        self.rows = rows
        self.finish(trainer, pl_module, out, settings, suffix)
        return rows

    def model_at(self, pl_module: pl.LightningModule, curve: Any, t: float, datamodule: Any) -> nn.Module:
        """The point at t with fresh BN statistics, or an endpoint as given."""
        if curve is None:
            return pl_module.eval_model()  # type: ignore[operator]
        if self.endpoints_as_given and t in (0.0, 1.0):
            return curve.endpoint(int(t)).to(pl_module.device)
        point = curve.at(t)
        recompute_bn(point, datamodule.bn_dataloader(self.bn_data), device=pl_module.device)
        return point

    def evaluation_loaders(self, datamodule: Any) -> dict[str, Any]:
        return {name: datamodule.eval_dataloader(dataset) for name, dataset in datamodule.eval_datasets().items()}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = datamodule_of(trainer)
        if self.injection_path and datamodule is not None and hasattr(datamodule, "reserve_for_injection"):
            self.injection_sets(datamodule)  # before any loader exists: clean accuracy is measured without them

    def injection_sets(self, datamodule: Any) -> InjectionSets | None:
        """The injection's targets and keep set, taken out of the clean evaluation set (one role per image)."""
        if not self.injection_path:
            return None
        if getattr(self, "_injection", None) is None:
            self._injection = InjectionSets.load(self.injection_path)
            if hasattr(datamodule, "reserve_for_injection"):
                datamodule.reserve_for_injection(self._injection.roles())
        return self._injection

    def holdout_loader(self, datamodule: Any) -> Any:
        if datamodule.bonafide_index is None or not datamodule.bonafide.holdout_size:
            return None
        holdout = datamodule.bonafide_dataset("holdout")
        self.holdout_count = len(holdout)  # the automatic selection tolerance needs it
        return datamodule.eval_dataloader(holdout)

    # ----------------------------------------------------------------------------------------------- output
    def columns(self, rows: list[dict[str, Any]]) -> list[str]:
        """t, the agreed metric columns present, other columns (holdout_acc, hessian_eig_k) sorted, then the counts."""
        present = {key for row in rows for key in row}
        extra = sorted(present - set(COLUMNS) - set(COUNT_COLUMNS))
        return [c for c in COLUMNS if c in present] + extra + [c for c in COUNT_COLUMNS if c in present]

    def resumable_rows(self, out: Path, settings: dict[str, Any], suffix: str) -> list[dict[str, Any]]:
        """Rows of an earlier, interrupted sweep with the same settings in the same folder."""
        metrics, saved = out / f"path_metrics{suffix}.csv", out / f"path_settings{suffix}.json"
        if not metrics.is_file() or not saved.is_file():
            return []
        if json.loads(saved.read_text()) != json.loads(json.dumps(settings, default=str)):
            return []
        rows = read_csv(metrics)
        if rows:
            rank_zero_info(f"PathEvaluation: resuming, {len(rows)} of {len(self.ts)} points already in {metrics}")
        return rows

    def write_rows(self, out: Path, rows: list[dict[str, Any]], settings: dict[str, Any], suffix: str) -> None:
        write_json(out / f"path_settings{suffix}.json", settings)
        write_csv(out / f"path_metrics{suffix}.csv", rows, self.columns(rows))

    def log_row(self, trainer: pl.Trainer, index: int, row: dict[str, Any], suffix: str) -> None:
        for logger in trainer.loggers:
            metrics = {f"path{suffix}/{key}": float(value) for key, value in row.items() if value is not None}
            logger.log_metrics(metrics, step=index)

    def finish(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, out: Path, settings: dict[str, Any], suffix: str
    ) -> None:
        """Choose t, write the summary and the figure, print the table (rank 0 writes)."""
        rows = self.rows
        selection = self.choose(rows)
        pl_module.selected_t = selection["selected_t"]  # type: ignore[assignment]
        self.summary = {**summarize_path(rows, settings), **selection, "bn_data": self.bn_data}
        if not trainer.is_global_zero:
            return
        write_json(out / f"path_summary{suffix}.json", self.summary)
        figure = plot_path(
            rows,
            str(out / f"path_figure{suffix}.png"),
            title=run_title(trainer, out) + suffix,
            selected_t=selection["selected_t"],
        )
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "add_figure"):
                experiment.add_figure(f"path{suffix}/figure", figure)
        print(f"\nPath evaluation ({len(rows)} points, BN on {self.bn_data} data), written to {out}:")
        print(markdown_table(rows, self.columns(rows)))
        if selection["selected_t"] is not None:
            print(f"selected t = {selection['selected_t']} ({selection['rule']})")

    def choose(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The repaired point: explicit, or by the held-out bonafide rule (never an endpoint)."""
        if self.selection_t is not None:
            result = select_t(rows, explicit=self.selection_t)
        elif len(rows) > 2 and any(row.get("holdout_acc") is not None for row in rows):
            count = getattr(self, "holdout_count", None)
            result = select_t(rows, column="holdout_acc", tolerance=self.selection_tolerance, count=count)
        else:
            return {
                "selected_t": None,
                "rule": "no held-out bonafide data (set data.bonafide.holdout_size) and no selection_t",
            }
        return {"selected_t": result.t, "rule": result.rule}
