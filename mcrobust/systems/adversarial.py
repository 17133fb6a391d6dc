"""`AdversarialSystem`: Madry PGD adversarial training (Zhao et al. 2020), the robust endpoint of §5."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from mcrobust.systems.endpoint import EndpointSystem
from mcrobust.threats.evasion import PGD, AutoAttack
from mcrobust.utils.seeding import Stream, derived_seed


class AdversarialSystem(EndpointSystem):
    """Minimises CE(net(PGD(x)), y) (Madry et al. 2018); logs clean and robust validation accuracy.

    The attack runs with the net in eval mode (BN statistics untouched), the update in train mode. Each epoch
    draws new random starts: the train attack's seed is offset by the epoch.

    Args:
        net: the architecture.
        optimizer: optimizer factory.
        scheduler: learning-rate scheduler factory (None: constant).
        init_weights: start from these weights instead of a fresh init.
        train_attack: the attack that makes the training examples (PGD, 7 steps of 2/255 in an 8/255 ball).
        eval_attack: the attack for `val|test/robust_acc` (PGD 10 steps by default; AutoAttack for a stronger check).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        init_weights: str | None = None,
        train_attack: PGD | None = None,
        eval_attack: PGD | AutoAttack | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, init_weights, eval_attack or PGD())
        self.train_attack = train_attack or PGD(eps=8 / 255, alpha=2 / 255, steps=7)
        self._train_seed = self.train_attack.seed

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        index = batch[2] if len(batch) > 2 else None
        self.train_attack.seed = derived_seed(self._train_seed, Stream.TRAIN_ATTACK, self.current_epoch)
        x_adv = self.train_attack(self.net, x, y, index)
        logits = self.net(x_adv)
        loss = F.cross_entropy(logits, y)
        self.log_step_metrics("train", logits, y, loss)
        return loss
