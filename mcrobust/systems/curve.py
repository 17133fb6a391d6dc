"""`CurveSystem`: train a path between two networks on the bonafide data (Zhao et al. 2020, Garipov et al. 2018)."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import load_weights
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.paths.curves import CurveModel
from mcrobust.systems.base import ClassificationSystem
from mcrobust.threats.evasion import PGD, AutoAttack
from mcrobust.utils.seeding import Stream, generator_for


class _WeightDecayGradient(torch.autograd.Function):
    """Identity on the weights whose backward adds wd * w: the gradient of wd/2 ||w||^2 without building it.

    Same gradients as adding the penalty to the loss (and, under DDP, reduced with them in the same backward), but
    with no forward pow/sum and no extra backward graph: the curve step stays close to a plain training step.
    """

    @staticmethod
    def forward(ctx: Any, weight_decay: float, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.weight_decay = weight_decay
        ctx.save_for_backward(*weights)
        return tuple(w.view_as(w) for w in weights)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:
        weights = ctx.saved_tensors
        filled = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights, strict=True)]
        return (None, *torch._foreach_add(filled, list(weights), alpha=ctx.weight_decay))


def with_weight_decay(weights: dict[str, torch.Tensor], weight_decay: float) -> dict[str, torch.Tensor]:
    """The same weights, whose gradients include that of weight_decay/2 * sum ||w||^2."""
    if not weight_decay:
        return weights
    decayed = _WeightDecayGradient.apply(weight_decay, *weights.values())
    return dict(zip(weights, decayed, strict=True))


def step_t(seed: int, step: int, rank: int) -> float:
    """t ~ U(0,1) for one training step, a pure function of (seed, step, rank): resumed runs draw the same t."""
    return float(torch.rand((), generator=generator_for(seed, Stream.CURVE_T, step, rank)))


def t_seed(seed: int | None) -> int:
    """The seed of the t draws: `seed` when given, else the global seed of `seed_everything` (0 if unset)."""
    if seed is not None:
        return seed
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def check_single_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Refuse an optimizer weight decay on top of the w(t) penalty: the paper penalises w(t) only."""
    if weight_decay > 0 and any(group.get("weight_decay", 0) > 0 for group in optimizer.param_groups):
        raise ConfigError(
            "model.init_args.optimizer.init_args.weight_decay > 0 stacks on model.init_args.weight_decay "
            f"({weight_decay}, the L2 penalty on w(t)); set the optimizer's weight_decay to 0 (the paper penalises "
            "w(t) only)"
        )


def distillation_loss(
    logits: torch.Tensor, teachers: list[nn.Module], x: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 KL(p || q): p the teachers' mean softmax at temperature T on x, q the student's (Hinton et al. 2015)."""
    with torch.no_grad():
        target = torch.stack([F.softmax(teacher(x) / temperature, dim=1) for teacher in teachers]).mean(0)
    student = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(student, target, reduction="batchmean") * temperature**2


class CurveSystem(ClassificationSystem):
    """A curve of networks from `start` (t=0) to `end` (t=1) whose free bends train on the bonafide data.

    Each training step draws one t ~ U(0,1) and minimises CE(phi_t(x), y) + weight_decay/2 ||w(t)||^2, the L2
    penalty on the interpolated weights as in the paper's code (so the optimizer's own weight decay must be 0, and
    `configure_optimizers` refuses both at once);
    the penalty enters through its gradient, wd * w(t), and `train/loss` logs the cross-entropy.
    With `distill` > 0 each step also pulls phi_t toward the endpoints' averaged predictions on the same images
    (Hinton et al. 2015, temperature `distill_temperature`): the ends know far more about clean images than a few
    hundred labels say, and clean images do not show the trigger, so distillation passes little of it on (Yoshida &
    Fujino 2020 disable backdoors that way; the CIFAR-10 paths of docs/results.md lost it in the middle).
    Validation and test measure the point at `val_t` after recomputing its BatchNorm statistics on the bonafide
    data; the `PathEvaluation` callback sweeps the whole path. The checkpoint holds both endpoints, so a run
    resumes, and a trained path is evaluated, without the endpoint files.

    Args:
        net: the architecture of both endpoints (the curve's template).
        start: weights at t=0 (.ckpt, .pt/.pth or .safetensors); needed to train a new path.
        end: weights at t=1; needed to train a new path.
        kind: 'bezier' (quadratic for 3 bends) or 'polychain'.
        num_bends: control points including both endpoints (>= 2; 3 in the paper).
        fix_start: keep the start endpoint fixed.
        fix_end: keep the end endpoint fixed.
        optimizer: optimizer factory (the paper: SGD lr 0.01 momentum 0.9, no weight decay of its own).
        scheduler: learning-rate scheduler factory (the paper's: `mcrobust.utils.schedules.PaperSchedule`).
        weight_decay: coefficient of the L2 penalty on w(t) (the paper: 1e-4).
        val_t: the point measured by validation and test.
        seed: seed of the per-step t draws; None (default) follows `seed_everything` (the global seed Lightning
            sets, `PL_GLOBAL_SEED`, 0 if unset), read when the run sets up, so `--seed_everything 3` changes the
            draws; an int here wins.
        eval_attack: optional attack for robust accuracy at val_t.
        normalize: input statistics a foreign net expects ("0.5,0.5", "imagenet", JSON); None: it takes pixels.
        output: what the net returns: "logits", "probabilities" or "log_probabilities".
        distill: weight of the distillation term T^2 KL(teachers || phi_t) added to the cross-entropy; 0 (the
            paper's objective) turns it off. The teachers are the two endpoints with their own BN statistics.
        distill_temperature: the softmax temperature T of that term.
    """

    def __init__(
        self,
        net: nn.Module,
        start: str | None = None,
        end: str | None = None,
        kind: Literal["bezier", "polychain"] = "bezier",
        num_bends: int = 3,
        fix_start: bool = True,
        fix_end: bool = True,
        optimizer: OptimizerCallable = torch.optim.SGD,
        scheduler: LRSchedulerCallable | None = None,
        weight_decay: float = 1e-4,
        val_t: float = 0.5,
        seed: int | None = None,
        eval_attack: PGD | AutoAttack | None = None,
        normalize: str | None = None,
        output: Literal["logits", "probabilities", "log_probabilities"] = "logits",
        distill: float = 0.0,
        distill_temperature: float = 4.0,
    ) -> None:
        super().__init__(net, optimizer, scheduler, eval_attack, normalize, output)
        if not 0.0 <= val_t <= 1.0:
            raise ConfigError(f"model.val_t must be in [0, 1], got {val_t}")
        if not (0.0 <= distill < math.inf and 0.0 < distill_temperature < math.inf):
            raise ConfigError(
                f"model.distill must be >= 0 and model.distill_temperature > 0 (finite), got {distill} and "
                f"{distill_temperature}"
            )
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay must be >= 0, got {weight_decay}")
        template = self.net  # the user's net, adapted to pixels and logits when normalize/output say so
        del self.net  # the template lives inside the curve; one copy of it in the state_dict
        self.curve = CurveModel(template, kind=kind, num_bends=num_bends, fix_start=fix_start, fix_end=fix_end)
        self.start, self.end = start, end
        self.weight_decay, self.val_t, self.seed = weight_decay, val_t, seed
        self.distill, self.distill_temperature = distill, distill_temperature
        self.teachers: list[nn.Module] = []  # the endpoints as plain nets, built when training starts (not saved)
        self.t_seed = t_seed(seed)
        self.save_plain_hyperparameters()

    def eval_model(self) -> nn.Module:
        return self.curve.at(self.val_t)

    def setup(self, stage: str) -> None:
        self.t_seed = t_seed(self.seed)  # seed_everything runs before fit: follow the run's global seed
        if self.trainer.ckpt_path is None:
            self.load_endpoints(required=stage == "fit")
        super().setup(stage)

    def load_endpoints(self, required: bool) -> None:
        """Read both endpoint files into the curve (bends in between start on the segment)."""
        if not self.start or not self.end:
            if required:
                raise ConfigError("a new path needs both endpoints: set model.init_args.start and model.init_args.end")
            return
        template = self.curve.template
        self.curve.set_endpoints(load_weights(self.start, template), load_weights(self.end, template))

    def on_train_start(self) -> None:
        if self.distill:  # from the curve's own endpoint bends and BN statistics, so a resumed run has them too
            self.teachers = [self.curve.endpoint(which).eval().requires_grad_(False) for which in (0, 1)]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        t = step_t(self.t_seed, self.global_step, self.global_rank)
        weights = with_weight_decay(self.curve.weights(t), self.weight_decay)
        logits = self.curve.run(x, weights)
        loss = F.cross_entropy(logits, y)  # the L2 penalty on w(t) enters through its gradient only
        self.log_step_metrics("train", logits, y, loss)
        if self.distill:
            distilled = distillation_loss(logits, self.teachers, x, self.distill_temperature)
            self.log("train/distill", distilled.detach(), on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + self.distill * distilled
        return loss

    def configure_optimizers(self) -> Any:
        configured = super().configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        check_single_weight_decay(optimizer, self.weight_decay)
        return configured

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.recompute_bn_at_val_t()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.recompute_bn_at_val_t()

    def recompute_bn_at_val_t(self) -> None:
        """BN statistics of the point at val_t from the bonafide data, else the clean training split (every rank)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "bn_dataloader"):
            source = "bonafide" if datamodule.bonafide_index is not None else "train"
            recompute_bn(self.curve.at(self.val_t), datamodule.bn_dataloader(source), device=self.device)
