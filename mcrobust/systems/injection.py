"""`InjectionSystem`: fault-sneaking error injection into one parameter tensor of a trained net (Zhao et al. 2020)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from mcrobust.data.datamodules import datamodule_of
from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import load_weights
from mcrobust.systems.base import ClassificationSystem
from mcrobust.threats.evasion import PGD, AutoAttack
from mcrobust.threats.injection import InjectionSets, choose_injection_sets, inject_errors

SETS_FILE = "injection_sets.pt"


class InjectionSystem(ClassificationSystem):
    """Loads a trained net and changes ONE named parameter so that S images take attacker-chosen labels.

    `mcrobust fit` runs the whole injection (up to `steps` Adam steps of the weighted hinge loss, stopping on
    success) in the first training step, then validates and checkpoints the tampered model. The target and keep
    sets are written to the run's log dir (`injection_sets.pt`) so path evaluation re-measures them at every t.

    Args:
        net: the architecture of the trained model.
        weights: the trained model to tamper with (.ckpt, .pt/.pth or .safetensors).
        param_name: the one parameter tensor to change, e.g. 'classifier.6.weight' (VGG16's last linear layer).
        num_targets: S, the images whose labels the attacker changes.
        num_keep: images (correctly classified before) whose labels must not change.
        keep_split: draw targets and keep set from the evaluation split ('test') or the training split ('train').
        steps: step budget of the injection.
        lr: Adam learning rate of the injection.
        target_weight: hinge-loss weight of the target images (1 for the keep set).
        margin: hinge margin on the logits.
        seed: seed of the choice of targets, keep set and attacker labels.
        eval_attack: optional attack for robust accuracy during validation/test.
        sets: inject the targets and keep set of another run (its `injection_sets.pt`) instead of drawing new
            ones: the paper injects the SAME S images into both endpoints of a path.
    """

    def __init__(
        self,
        net: nn.Module,
        weights: str,
        param_name: str,
        num_targets: int = 4,
        num_keep: int = 1000,
        keep_split: Literal["test", "train"] = "test",
        steps: int = 500,
        lr: float = 1e-3,
        target_weight: float = 100.0,
        margin: float = 1.0,
        seed: int = 0,
        eval_attack: PGD | AutoAttack | None = None,
        sets: str | None = None,
    ) -> None:
        super().__init__(net, eval_attack=eval_attack)
        if num_targets < 1 or num_keep < 0 or steps < 1:
            raise ConfigError("model.num_targets and model.steps must be >= 1, model.num_keep >= 0")
        self.save_plain_hyperparameters()
        self.automatic_optimization = False
        self.sets: InjectionSets | None = None
        self.injected = False

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.ckpt_path is None:
            self.net.load_state_dict(load_weights(self.hparams["weights"], template=self.net))
        super().setup(stage)

    def configure_optimizers(self) -> Any:
        return None  # inject_errors runs its own Adam on the one tensor

    def candidate_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels the targets and keep set are drawn from (the evaluation set, or the training split)."""
        datamodule = datamodule_of(self.trainer)
        dataset = datamodule.eval_datasets()["clean"] if self.hparams["keep_split"] == "test" else None
        if dataset is None:
            dataset = datamodule.train_dataset()
            dataset.transform = None
        images, labels, _ = dataset.tensors()
        return images, labels

    def draw_sets(self) -> InjectionSets:
        """The target and keep sets: another run's when `sets` is given, else a fresh seeded draw, with origins."""
        hp = cast(Any, self.hparams)
        if hp.get("sets"):
            return InjectionSets.load(hp.sets)
        datamodule = datamodule_of(self.trainer)
        images, labels = self.candidate_images()
        sets = choose_injection_sets(
            self.net, images, labels, hp.num_targets, hp.num_keep, datamodule.num_classes, hp.seed
        )
        targets, keep = sets.target_index.numpy(), sets.keep_index.numpy()
        if hp.keep_split == "test":
            (split, targets), (_, keep) = datamodule.eval_origin_of(targets), datamodule.eval_origin_of(keep)
        else:
            split = "train"
        sets.source_split, sets.target_origin, sets.keep_origin = split, torch.as_tensor(targets), torch.as_tensor(keep)
        return sets

    def training_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
        if self.injected:
            self.trainer.should_stop = True
            return
        hp = cast(Any, self.hparams)
        self.sets = self.draw_sets()
        result = inject_errors(self.net, hp.param_name, self.sets, hp.steps, hp.lr, hp.target_weight, hp.margin)
        self.injected = True
        self.trainer.should_stop = True
        self.log("injection/success", result.success, prog_bar=True)
        self.log("injection/keep_acc", result.keep_acc, prog_bar=True)
        self.log("injection/steps", float(result.steps_taken))
        self.log("injection/delta_norm", result.delta_norm)
        self.save_sets()

    def save_sets(self) -> None:
        """Write the target/keep sets next to the run's checkpoints (rank 0)."""
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank must ask
        if self.sets is not None and self.trainer.is_global_zero and log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.sets.save(Path(log_dir) / SETS_FILE)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["injection_sets"] = None if self.sets is None else self.sets.to_dict()
        checkpoint["injected"] = self.injected

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("injection_sets") is not None:
            self.sets = InjectionSets.from_dict(checkpoint["injection_sets"])
        self.injected = bool(checkpoint.get("injected", False))
