"""`NoisySystem`: the noisy-model baseline (Zhao et al. 2020), the endpoints' midpoint plus Gaussian noise.

Nothing trains: `mcrobust test --config configs/experiments/baseline_noisy_<setting>.yaml` draws `num_draws`
seeded models and the `mcrobust.callbacks.NoisyEvaluation` callback (in `configs/parts/systems/noisy.yaml`)
recomputes each one's BatchNorm statistics on the bonafide data, evaluates it and logs the mean and the spread over
draws. The system holds the model: the endpoints, the noise scale and how draw k is made.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mcrobust.defenses.noisy import draw_generator, noisy_weights
from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import load_weights
from mcrobust.systems.base import ClassificationSystem
from mcrobust.threats.evasion import PGD, AutoAttack

MISSING_EVALUATION = (
    "the noisy baseline's draws are evaluated by the NoisyEvaluation callback: add "
    "`- class_path: mcrobust.callbacks.NoisyEvaluation` to trainer.callbacks (configs/parts/systems/noisy.yaml has "
    "it), or `callbacks=[NoisyEvaluation()]` to a Trainer in Python"
)


class NoisySystem(ClassificationSystem):
    """`num_draws` noisy midpoints of two endpoints, evaluated by the `NoisyEvaluation` callback.

    Draw k is `mcrobust.defenses.noisy.noisy_weights(start, end, scale)` from a CPU generator seeded by (seed, k), so
    every rank, device and rerun sees the same weights. `NoisyEvaluation` loads each draw into `net`, recomputes its
    BN statistics and logs `test/<metric>` (mean over draws) and `test/<metric>_std`; `eval_attack` adds
    `test/robust_acc` and `test/robust_loss`. The system refuses to run without that callback.

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
        self.endpoints: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self.save_plain_hyperparameters()

    def setup(self, stage: str) -> None:
        if stage not in ("test", "validate"):
            raise ConfigError(
                "the noisy baseline has nothing to train or predict: evaluate it with "
                "`mcrobust test --config <file>` (model.init_args.start and end name the endpoints)"
            )
        super().setup(stage)
        # the callback layer sits above systems, so the callback is recognised by its method, not by its class
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
        if not any(callable(getattr(callback, "evaluate_draws", None)) for callback in callbacks):
            raise ConfigError(MISSING_EVALUATION)
        self.endpoints = self.read_endpoints()  # read at every start: start and end may have been changed

    def read_endpoints(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The two endpoints' weights, as the keys and shapes of `net`."""
        if not self.start or not self.end:
            raise ConfigError(
                "the noisy baseline needs both endpoints: set model.init_args.start and model.init_args.end"
            )
        return load_weights(self.start, self.net), load_weights(self.end, self.net)

    def draw(self, index: int) -> dict[str, torch.Tensor]:
        """The weights (a state_dict of `net`) of draw `index`: only parameters get noise, buffers the midpoint."""
        if self.endpoints is None:  # used outside a Trainer
            self.endpoints = self.read_endpoints()
        parameters = {name for name, _ in self.net.named_parameters()}
        generator = draw_generator(self.seed, index)
        return noisy_weights(*self.endpoints, scale=self.scale, generator=generator, parameters=parameters)

    # ------------------------------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing per batch: NoisyEvaluation evaluates every draw in full at the end of the epoch."""

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing per batch: NoisyEvaluation evaluates every draw in full at the end of the epoch."""
