"""`EndpointSystem`: train one network with cross-entropy (clean, backdoored, fine-tuned or from scratch)."""

from __future__ import annotations

from typing import Literal

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from mcrobust.io.checkpoints import load_weights
from mcrobust.systems.base import ClassificationSystem
from mcrobust.threats.evasion import PGD, AutoAttack


class EndpointSystem(ClassificationSystem):
    """A network trained with cross-entropy on the data module's training set.

    Trained on the (poisoned) training split it makes the endpoints to repair; with `init_weights` and the
    bonafide subset it is the fine-tuning baseline and the second endpoint of single-model repair.

    Args:
        net: the architecture.
        optimizer: optimizer factory.
        scheduler: learning-rate scheduler factory (None: constant).
        init_weights: these weights (.ckpt, .pt/.pth or .safetensors, nested layouts accepted): where fit starts
            instead of a fresh init, and what validate/test evaluate.
        eval_attack: attack for `val|test/robust_acc` and `robust_loss` (PGD or AutoAttack); None: no attack.
        normalize: input statistics a foreign net expects ("0.5,0.5", "imagenet", JSON); None: it takes pixels.
        output: what the net returns: "logits", "probabilities" or "log_probabilities".
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        init_weights: str | None = None,
        eval_attack: PGD | AutoAttack | None = None,
        normalize: str | None = None,
        output: Literal["logits", "probabilities", "log_probabilities"] = "logits",
    ) -> None:
        super().__init__(net, optimizer, scheduler, eval_attack, normalize, output)
        self.init_weights = init_weights
        self.weights_ready = False  # set once the weights are loaded or trained, so a later stage keeps them
        self.save_plain_hyperparameters()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.trainer.ckpt_path is not None or self.weights_ready:
            return  # restored from a checkpoint, or trained / loaded earlier in this process (fit, then test)
        if self.init_weights:  # any stage: `mcrobust test --model.init_args.init_weights x.pt` evaluates x.pt
            self.net.load_state_dict(load_weights(self.init_weights, template=self.net))
        elif stage == "fit":
            self.use_data_statistics()
        self.weights_ready = stage == "fit" or bool(self.init_weights)
