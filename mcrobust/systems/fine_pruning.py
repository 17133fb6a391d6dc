"""`FinePruningSystem`: Fine-Pruning (Liu et al. 2018), a repair baseline of Zhao et al. 2020.

Prune the channels of one conv layer that the bonafide data activates least (backdoor neurons stay dormant on
clean inputs), then fine-tune the pruned network on the same bonafide data.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mcrobust.defenses.fine_pruning import (
    ChannelBlock,
    channel_activations,
    channel_block,
    last_conv_name,
    least_active_channels,
    prunable_layer,
    zero_channels,
)
from mcrobust.errors import ConfigError
from mcrobust.systems.endpoint import EndpointSystem
from mcrobust.threats.evasion import PGD, AutoAttack


class FinePruningSystem(EndpointSystem):
    """Loads a tampered network, prunes the least active channels of one layer, fine-tunes on the bonafide data.

    At the start of a new fit (not on resume) the mean activation of every output channel of `layer` is measured on
    the bonafide training images (`datamodule.bn_dataloader()`, no augmentation, net in eval mode) after the ReLU
    module that follows the layer (and its BatchNorm); where no ReLU module consumes the output (a residual add, a
    functional relu) the BN or conv output itself is measured. The round(prune_ratio * C) least active channels are
    pruned by zeroing their conv filters and bias and their BatchNorm weight and bias, so each is exactly 0 after BN
    and ReLU and gets zero gradients; the zeros are re-applied after every training batch. No hook or extra tensor
    lives in `net`: its state_dict loads into the bare architecture and computes the same function. The choice is
    kept in the system's `channel_mask` buffer (1 kept, 0 pruned; outside `net`, so a checkpoint resumes).
    `layer` may also name a BatchNorm: in a pre-activation ResNet the last conv feeds a residual add, and the final
    BN (`bn` of PreResNet, before ReLU and pooling) holds the last feature channels that Liu et al. prune.
    Train with `data.train_on: bonafide`. Logs `prune/ratio` and `prune/channels` (the number pruned).

    Args:
        net: the architecture.
        init_weights: the tampered network to repair (.ckpt, .pt/.pth or .safetensors); needed for a new fit.
        layer: name (as in `net.named_modules()`) of the nn.Conv2d, or BatchNorm, to prune; None: the last nn.Conv2d.
        prune_ratio: fraction of the layer's output channels to prune, in [0, 1).
        optimizer: optimizer factory (fine-tuning; the paper's fine-tuning baseline: SGD lr 0.015 momentum 0.9).
        scheduler: learning-rate scheduler factory (None: constant).
        eval_attack: attack for `val|test/robust_acc` and `robust_loss` (PGD or AutoAttack); None: no attack.
    """

    def __init__(
        self,
        net: nn.Module,
        init_weights: str | None = None,
        layer: str | None = None,
        prune_ratio: float = 0.5,
        optimizer: OptimizerCallable = torch.optim.SGD,
        scheduler: LRSchedulerCallable | None = None,
        eval_attack: PGD | AutoAttack | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, init_weights, eval_attack)
        if not 0.0 <= prune_ratio < 1.0:
            raise ConfigError(f"model.prune_ratio must be in [0, 1), got {prune_ratio}")
        self.layer = layer or last_conv_name(net)
        self.prune_ratio = prune_ratio
        self.block: ChannelBlock | None = None
        self.activations: torch.Tensor | None = None
        self.channel_mask: torch.Tensor
        self.register_buffer("channel_mask", torch.ones(ChannelBlock(self.pruned_layer).channels))

    @property
    def pruned_layer(self) -> nn.Conv2d | _BatchNorm:
        """The layer named `layer` (looked up, not stored: a second reference would duplicate its state_dict keys)."""
        return prunable_layer(self.net, self.layer)

    @property
    def pruned_channels(self) -> list[int]:
        """Indices of the pruned output channels of `layer`."""
        return [int(i) for i in torch.nonzero(self.channel_mask == 0).flatten()]

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.ckpt_path is None and not self.init_weights:
            raise ConfigError("fine-pruning repairs a trained network: set model.init_args.init_weights")
        super().setup(stage)

    def on_fit_start(self) -> None:
        """Prune a freshly loaded network (a resumed run restored its mask and zeros from the checkpoint)."""
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ConfigError("fine-pruning needs the RobustDataModule (its bonafide data rank the channels)")
        loader = datamodule.bn_dataloader()
        example = next(iter(loader))[0][:2].to(self.device)
        self.block = channel_block(self.net, self.pruned_layer, example)
        if self.trainer.ckpt_path is None:
            self.prune(loader)
        zero_channels(self.block, self.channel_mask)
        self.log_pruning()

    def prune(self, loader: Any) -> None:
        """Rank the channels on the bonafide data (rank 0's choice is broadcast) and zero the least active ones."""
        assert self.block is not None
        self.activations = channel_activations(self.net, self.block, loader, device=self.device)
        least_active = least_active_channels(self.activations, self.prune_ratio).tolist()
        chosen = self.trainer.strategy.broadcast(least_active)  # identical choice on every rank
        self.channel_mask.fill_(1.0)
        self.channel_mask[torch.as_tensor(chosen, dtype=torch.long)] = 0.0
        rank_zero_info(
            f"Fine-pruning: {len(chosen)} of {self.block.channels} channels of {self.layer!r} pruned "
            f"(ratio {self.prune_ratio}), activations measured {self.block.describe()}"
        )

    def log_pruning(self) -> None:
        """`prune/ratio` and `prune/channels` to every logger (step 0; logging is not allowed in on_fit_start)."""
        metrics = {"prune/ratio": float(self.prune_ratio), "prune/channels": float(len(self.pruned_channels))}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Keep the pruned channels at zero after the optimizer step."""
        if self.block is not None:
            zero_channels(self.block, self.channel_mask)
