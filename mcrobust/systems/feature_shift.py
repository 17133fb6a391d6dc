"""`FeatureShiftSystem`: fine-tuning with a re-initialised head pushed away from the tampered one (FST).

Feature Shift Tuning (Min et al., NeurIPS 2023): re-initialise the last linear layer, then fine-tune every weight on
clean data with CE + alpha <W, W_0>, W_0 the tampered head, and W rescaled to ||W_0|| after every step. The
penalty makes the features shift away from those the old head read the trigger from; alpha = 0 is their "FT-init"
(a re-initialised head, plain fine-tuning).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from mcrobust.errors import ConfigError
from mcrobust.systems.endpoint import EndpointSystem


def last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    """The net's last nn.Linear in module order (its classifier head), with its name.

    Raises:
        ConfigError: when the net has no nn.Linear.
    """
    found = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise ConfigError(
            f"second_end needs a last nn.Linear layer (the head) to re-initialise; {type(net).__name__} has none: "
            "use second_end: superfinetune or scratch"
        )
    return found[-1]


class FeatureShiftSystem(EndpointSystem):
    """Fine-tune `init_weights` with the head re-initialised and pushed away from the original head.

    Args:
        net: the architecture.
        optimizer: optimizer factory.
        scheduler: learning-rate scheduler factory (None: constant).
        init_weights: the tampered weights fine-tuning starts from (required).
        alpha: weight of the penalty alpha * sum(W * W_0) on the head (Min et al.: 0.2); 0 re-initialises only.
        normalize: input statistics a foreign net expects ("0.5,0.5", "imagenet", JSON); None: it takes pixels.
        output: what the net returns: "logits", "probabilities" or "log_probabilities".
    """

    original_head: torch.Tensor
    original_norm: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.SGD,
        scheduler: LRSchedulerCallable | None = None,
        init_weights: str | None = None,
        alpha: float = 0.2,
        normalize: str | None = None,
        output: Literal["logits", "probabilities", "log_probabilities"] = "logits",
    ) -> None:
        super().__init__(net, optimizer, scheduler, init_weights, None, normalize, output)
        if alpha < 0:
            raise ConfigError(f"the feature-shift alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.head_name, head = last_linear(self.net)
        # the tampered head and its norm travel in checkpoints, so a resumed run keeps pushing away from the same W_0
        self.register_buffer("original_head", head.weight.detach().clone())
        self.register_buffer("original_norm", head.weight.detach().norm())

    @property
    def head(self) -> nn.Linear:
        """The head being re-trained."""
        return self.net.get_submodule(self.head_name)  # type: ignore[return-value]

    def setup(self, stage: str) -> None:
        # resumed, or set up before in this process: the checkpoint / the net already hold the new head and W_0
        fresh = self.trainer.ckpt_path is None and not getattr(self, "weights_ready", False)
        super().setup(stage)
        if stage != "fit" or not fresh:
            return
        if not self.init_weights:
            raise ConfigError("FeatureShiftSystem needs init_weights: the tampered model it fine-tunes")
        head = self.head
        self.original_head.copy_(head.weight.detach())
        self.original_norm.copy_(head.weight.detach().norm())
        head.reset_parameters()  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as FST's code draws it

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log_step_metrics("train", logits, y, loss)
        return loss + self.alpha * (self.head.weight * self.original_head).sum()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # FST keeps the head on the sphere of the original norm
            weight = self.head.weight
            weight.mul_(self.original_norm / weight.norm().clamp_min(1e-12))
