"""`ClassificationSystem`: a net trained and evaluated with cross-entropy; the base of every system.

Evaluation reports, per stage, `<stage>/acc` and `<stage>/loss` on the clean set and `<stage>/asr` (attack
success rate, standard definition: non-target images only) on the triggered set when a trigger is configured, with
`<stage>/ra` (robust accuracy: the same predictions against the images' true labels, BackdoorBench's third metric)
when its batches carry the true labels; `<stage>/n_clean` and `<stage>/n_triggered` count the images measured (the
n of a confidence interval). Every key names its set, so Lightning's results box, whose columns are
"DataLoader 0/1" whatever the loaders are called, is read with the one-line legend printed above it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sized
from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from mcrobust.data.datamodules import datamodule_of
from mcrobust.errors import ConfigError
from mcrobust.nets.adapters import adapt_net
from mcrobust.nets.layers import find_normalize
from mcrobust.threats.evasion import PGD, AutoAttack, robust_metrics
from mcrobust.utils.checks import check_finite_loss
from mcrobust.utils.schedules import OneCycleSchedule, PaperSchedule

STAGES = ("train", "val", "test")
METRICS = ("acc", "loss", "asr", "ra", "robust_acc", "robust_loss")
COUNTS = ("n_clean", "n_triggered")


class ClassificationSystem(pl.LightningModule):
    """Holds `net` and the metrics shared by every system.

    Args:
        net: the architecture (any nn.Module mapping images in [0,1] to logits).
        optimizer: optimizer factory (class_path/init_args in the config).
        scheduler: learning-rate scheduler factory; `mcrobust.utils.PaperSchedule` is the paper's.
            None: constant.
        eval_attack: attack for `val|test/robust_acc` and `robust_loss` on the clean set (PGD or AutoAttack).
        normalize: input statistics a foreign net expects ("0.5,0.5", "imagenet", JSON); mcrobust then feeds it
            (x - mean) / std, so triggers, PGD and the Hessian stay in [0,1] pixel space. None: the net takes pixels.
        output: what the net returns: "logits", "probabilities" (ends in a softmax) or "log_probabilities".
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        eval_attack: PGD | AutoAttack | None = None,
        normalize: str | None = None,
        output: Literal["logits", "probabilities", "log_probabilities"] = "logits",
    ) -> None:
        super().__init__()
        self.net = adapt_net(net, normalize, output)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_attack = eval_attack
        self.metrics = nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in STAGES for name in METRICS})
        self.eval_counts = nn.ModuleDict({f"{stage}_{name}": SumMetric() for stage in STAGES[1:] for name in COUNTS})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_model()(x)

    def eval_model(self) -> nn.Module:
        """The plain f(x) that validation and test measure (a curve system returns its point at val_t)."""
        return self.net

    def save_plain_hyperparameters(self) -> None:
        """save_hyperparameters(), keeping only plain values so checkpoints load with weights_only=True.

        Under LightningCLI the net, optimizer and attacks arrive as class_path/init_args dictionaries, which
        rebuild the system in `load_from_checkpoint`; objects passed from Python are left out (pass them again).
        """
        frame = inspect.currentframe()
        self.save_hyperparameters(frame=frame.f_back if frame is not None else None)
        initial = cast(dict, self._hparams_initial)
        for key in [k for k, v in self.hparams.items() if not _is_plain(v)]:
            del self._hparams[key]
            initial.pop(key, None)

    # ---------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        datamodule = datamodule_of(self.trainer) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "num_classes"):
            return
        self.check_num_classes(datamodule)

    def check_num_classes(self, datamodule: Any) -> None:
        """Fail early, in one line, when the net's logits do not match the data set's classes."""
        sample = datamodule.eval_datasets()["clean"][0][0].unsqueeze(0)
        model = self.eval_model()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            outputs = model(sample.to(self.device)).shape[-1]
        model.train(was_training)
        if outputs != datamodule.num_classes:
            raise ConfigError(
                f"the net outputs {outputs} logits but the data set has {datamodule.num_classes} classes; "
                "set model.init_args.net.init_args.num_classes"
            )

    def use_data_statistics(self) -> None:
        """Copy the data set's mean/std into the net's Normalize layer (fresh training only)."""
        datamodule = datamodule_of(self.trainer)
        normalize = find_normalize(self.net)
        if normalize is not None and datamodule is not None and getattr(datamodule, "mean", None):
            normalize.set_statistics(datamodule.mean, datamodule.std)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(p for p in self.parameters() if p.requires_grad)
        if self.scheduler_factory is None:
            return optimizer
        interval = "epoch"
        scheduler: Any
        if isinstance(self.scheduler_factory, OneCycleSchedule):  # steps every batch, over the run's optimizer steps
            interval = self.scheduler_factory.interval
            scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        else:
            scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, PaperSchedule) and scheduler.total_epochs is None:
            scheduler.total_epochs = self.trainer.max_epochs
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    # -------------------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        """Train every module. Lightning keeps the modes submodules arrive in, and a net handed over after
        `model.eval()` (how most models are shared) would train with frozen BatchNorm statistics and no dropout."""
        self.train()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log_step_metrics("train", logits, y, loss)
        return loss

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # every system's training loss passes here (curve penalty included): stop at the first NaN or inf
        check_finite_loss(loss, self.global_step)

    def log_step_metrics(self, stage: str, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """Update and log `<stage>/acc` and `<stage>/loss` from one batch."""
        acc, mean_loss = self.metric(f"{stage}_acc"), self.metric(f"{stage}_loss")
        acc.update((logits.argmax(dim=1) == y).float())
        mean_loss.update(loss.detach(), weight=len(y))
        on_step = stage == "train"
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, add_dataloader_idx=False)
        self.log(f"{stage}/loss", mean_loss, on_step=on_step, on_epoch=True, add_dataloader_idx=False)

    # ---------------------------------------------------------------------------------------------- evaluation
    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def _reset(self, stage: str) -> None:
        # ddp_spawn on CPU can share in-place metric state between workers: start every epoch from zero.
        for name in METRICS:
            self.metric(f"{stage}_{name}").reset()
        for name in COUNTS if stage != "train" else ():
            self.count_metric(f"{stage}_{name}").reset()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation_step("val", batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation_step("test", batch, dataloader_idx)

    def evaluation_step(self, stage: str, batch: Any, dataloader_idx: int) -> None:
        """Clean set: accuracy, loss and (with an attack) robust accuracy/loss; triggered set: ASR and RA.

        A triggered batch is `(x, target, index[, true_label])`: ASR counts predictions of the target, RA (with true
        labels) predictions of the true class, both from the same forward pass.
        """
        x, y = batch[0], batch[1]
        model = self.eval_model()
        logits = model(x)
        if self.eval_set_name(dataloader_idx) == "triggered":
            predicted = logits.argmax(dim=1)
            self.log_mean(f"{stage}/asr", predicted == y, prog_bar=True)
            if len(batch) > 3:
                self.log_mean(f"{stage}/ra", predicted == batch[3])
            self.log_count(f"{stage}/n_triggered", len(y))
            return
        self.log_step_metrics(stage, logits, y, F.cross_entropy(logits, y))
        self.log_count(f"{stage}/n_clean", len(y))
        if self.eval_attack is not None:
            index = batch[2] if len(batch) > 2 else None
            _, adv_logits = robust_metrics(model, self.eval_attack, x, y, index)
            self.log_mean(f"{stage}/robust_acc", adv_logits.argmax(dim=1) == y, prog_bar=True)
            self.log_mean(f"{stage}/robust_loss", F.cross_entropy(adv_logits, y, reduction="none"))

    def log_mean(self, key: str, values: torch.Tensor, prog_bar: bool = False) -> None:
        """Accumulate per-sample values into the epoch mean logged as `key` (e.g. 'test/asr')."""
        metric = self.metric(key.replace("/", "_"))
        metric.update(values.float())
        self.log(key, metric, on_epoch=True, prog_bar=prog_bar, add_dataloader_idx=False)

    def log_count(self, key: str, count: int) -> None:
        """Add a batch's images to the epoch count logged as `key` (e.g. 'test/n_clean'), summed over ranks."""
        metric = self.count_metric(key.replace("/", "_"))
        metric.update(torch.tensor(float(count), device=self.device))
        self.log(key, metric, on_epoch=True, add_dataloader_idx=False)

    def count_metric(self, name: str) -> SumMetric:
        """The running count behind one logged key ('test_n_clean' for 'test/n_clean')."""
        return cast(SumMetric, self.eval_counts[name])

    def metric(self, name: str) -> MeanMetric:
        """The running mean behind one logged key ('test_acc' for 'test/acc')."""
        return cast(MeanMetric, self.metrics[name])

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "validate":  # `mcrobust validate` prints a results box; fit does not
            self.print_loader_legend(self.trainer.val_dataloaders)

    def on_test_end(self) -> None:
        self.print_loader_legend(self.trainer.test_dataloaders)

    def print_loader_legend(self, loaders: Any) -> None:
        """One line naming the results box's "DataLoader i" columns (Lightning numbers them, it cannot name them)."""
        datamodule = datamodule_of(self.trainer)
        if not self.trainer.is_global_zero or datamodule is None or not hasattr(datamodule, "eval_set_names"):
            return
        loaders = [] if loaders is None else loaders if isinstance(loaders, (list, tuple)) else [loaders]
        names = datamodule.eval_set_names()
        parts = [
            f"DataLoader {i} = {name} set{_image_count(loader)}"
            for i, (name, loader) in enumerate(zip(names, loaders, strict=False))
        ]
        if parts:
            print("Evaluation sets: " + ", ".join(parts))

    def eval_set_name(self, dataloader_idx: int) -> str:
        """Name of an evaluation loader ('clean' or 'triggered'), as the data module orders them."""
        datamodule = datamodule_of(self.trainer)
        names = datamodule.eval_set_names() if datamodule is not None else ["clean"]
        return names[dataloader_idx]


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _image_count(loader: Any) -> str:
    """' (120 images)' for a loader over a sized data set, else ''."""
    dataset = getattr(loader, "dataset", None)
    return f" ({len(dataset)} images)" if isinstance(dataset, Sized) else ""
