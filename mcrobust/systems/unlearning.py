"""`UnlearningSystem`: fine-tuning that also classifies images carrying the model's universal weaknesses right.

Adversarial unlearning without the trigger, first-order: I-BAU (Zeng et al., ICLR 2022) trains against the
strongest universal perturbation of the clean data. Each step here trains on the clean batch and the batch plus its
untargeted universal perturbation, with their true labels; the perturbation is warm-started from the last step's,
so it tracks a weakness that holds across the data, as a trigger does. With `suspect`, Neural Cleanse's observation
(Wang et al., S&P 2019) is added: a backdoor's target is the class a small targeted universal perturbation reaches
most easily; that class is re-scanned (one targeted perturbation per class) at the start of every epoch, and the
batch plus its targeted perturbation is trained on too. With `eps_final`, the radius shrinks linearly from `eps` at
the first epoch to `eps_final` at the last: coarse to fine, the large radius to reach the trigger, the small one to give
back the clean accuracy the large one costs on converged models (docs/results.md, 2026-12-07).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from mcrobust.errors import ConfigError
from mcrobust.systems.endpoint import EndpointSystem
from mcrobust.threats.universal import easiest_target, universal_perturbation
from mcrobust.utils.modes import eval_mode


class UnlearningSystem(EndpointSystem):
    """Fine-tune `init_weights` on CE(x) + CE(x + delta) (+ CE(x + delta_suspect)), every label the true one.

    Args:
        net: the architecture.
        optimizer: optimizer factory.
        scheduler: learning-rate scheduler factory (None: constant).
        init_weights: the tampered weights fine-tuning starts from (required).
        eps: L2 radius of the perturbations in pixel units (at the first epoch, with `eps_final`).
        eps_final: the radius at the last epoch, reached linearly epoch by epoch; None: `eps` throughout.
        steps: search steps per perturbation and training step (twice as many per class in the epoch's scan).
        suspect: also unlearn the targeted perturbation toward the suspect class (about twice the cost).
        normalize: input statistics a foreign net expects ("0.5,0.5", "imagenet", JSON); None: it takes pixels.
        output: what the net returns: "logits", "probabilities" or "log_probabilities".
    """

    delta: torch.Tensor
    class_deltas: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.SGD,
        scheduler: LRSchedulerCallable | None = None,
        init_weights: str | None = None,
        eps: float = 3.0,
        eps_final: float | None = None,
        steps: int = 5,
        suspect: bool = False,
        normalize: str | None = None,
        output: Literal["logits", "probabilities", "log_probabilities"] = "logits",
    ) -> None:
        super().__init__(net, optimizer, scheduler, init_weights, None, normalize, output)
        if eps <= 0 or steps < 1 or (eps_final is not None and eps_final <= 0):
            raise ConfigError(
                f"unlearning needs unlearn_eps > 0 and unlearn_steps >= 1 (and unlearn_eps_final > 0 when set), got "
                f"{eps}, {steps} and {eps_final}"
            )
        self.eps, self.steps, self.use_suspect = eps, steps, suspect
        self.eps_first, self.eps_final = eps, eps_final
        self.radii: list[float] = []  # the radius of every epoch, first to last
        self.suspect = 0
        self.suspects: list[int] = []  # the suspect of every scan, first to last
        # warm starts, empty until the first batch gives their shapes; not in checkpoints (a resumed run re-scans)
        self.register_buffer("delta", torch.zeros(0), persistent=False)
        self.register_buffer("class_deltas", torch.zeros(0), persistent=False)

    def on_train_epoch_start(self) -> None:
        """Set this epoch's radius on the linear schedule from `eps` to `eps_final`."""
        if self.eps_final is not None:
            last = max((self.trainer.max_epochs or 1) - 1, 1)
            progress = min(self.current_epoch / last, 1.0)
            self.eps = self.eps_first + (self.eps_final - self.eps_first) * progress
        self.radii.append(self.eps)
        self.log("train/radius", self.eps, on_step=False, on_epoch=True)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if self.delta.shape != x.shape[1:]:
            self.delta = torch.zeros_like(x[0])
        self.delta = universal_perturbation(self.net, x, y, self.eps, self.steps, start=self.delta)
        perturbed = [(x + self.delta).clamp(0, 1)]
        if self.use_suspect:
            if batch_idx == 0 or self.class_deltas.shape[1:] != x.shape[1:]:
                self.scan(x, y)
            start = self.class_deltas[self.suspect]
            toward = universal_perturbation(self.net, x, y, self.eps, self.steps, start=start, target=self.suspect)
            self.class_deltas[self.suspect] = toward
            perturbed.append((x + toward).clamp(0, 1))
        clean, *attacked = self.net(torch.cat([x, *perturbed])).split(len(y))
        loss = F.cross_entropy(clean, y)
        self.log_step_metrics("train", clean, y, loss)
        for name, logits in zip(("untargeted", "targeted"), attacked, strict=False):
            self.log(f"train/{name}_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss + sum(F.cross_entropy(logits, y) for logits in attacked)

    def scan(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Refine one targeted perturbation per class on this batch and suspect the class it reaches most often."""
        if self.class_deltas.shape[1:] != x.shape[1:]:
            with torch.no_grad(), eval_mode(self.net):  # one image in train mode would nudge (or break) BatchNorm
                num_classes = self.net(x[:1]).shape[1]
            self.class_deltas = torch.zeros((num_classes, *x.shape[1:]), device=x.device, dtype=x.dtype)
        self.suspect, self.class_deltas, success = easiest_target(
            self.net, x, y, self.class_deltas, self.eps, 2 * self.steps
        )
        self.suspects.append(self.suspect)
        self.log("train/suspect", float(self.suspect), on_step=False, on_epoch=True)
        self.log("train/suspect_success", success.max(), on_step=False, on_epoch=True)
