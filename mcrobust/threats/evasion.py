"""Evasion attacks in pixel space: PGD (L-inf, L2) and a wrapper around torchattacks' AutoAttack.

Zhao et al. 2020 (§3, §5) measure robustness along a path with L-inf PGD (eps 8/255, step 2/255, 10 steps, uniform
random start) on inputs in [0,1]; every net normalises in its first layer, so the eps-ball lives in pixel space.
Random starts are drawn per sample (`mcrobust.utils.seeding`), so they do not depend on batching or sharding.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcrobust.errors import ConfigError
from mcrobust.utils.checks import require
from mcrobust.utils.modes import eval_mode, gradients_on
from mcrobust.utils.seeding import per_sample_normal, per_sample_uniform

NORMS = ("linf", "l2")


_TINY = 1e-12  # guards divisions by a zero gradient or perturbation norm


@runtime_checkable
class Attack(Protocol):
    """Anything called as ``attack(model, x, y, index) -> x_adv`` with x, x_adv images in [0,1]."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor: ...


def _usable(t: Tensor) -> Tensor:
    """A tensor autograd may save: inference tensors (made under ``inference_mode``) are copied."""
    return t.clone() if t.is_inference() else t.detach()


class PGD:
    """Projected gradient descent (Madry et al. 2018), L-inf or L2, on images in [0,1].

    The evasion attack of Zhao et al. 2020 (§3): the defaults are the paper's L-inf setting. One forward and one
    input-only backward per step (``torch.autograd.grad``): parameters' ``.grad`` are never touched, the model runs
    in eval mode and gets its previous mode back, and gradients are enabled locally so the attack works inside a
    ``no_grad`` or ``inference_mode`` validation step.

    Args:
        eps: radius of the perturbation ball in pixel units (L-inf: per pixel; L2: per image).
        alpha: step size (L-inf: per pixel, along the gradient sign; L2: length of the normalised gradient step).
        steps: number of gradient steps; 0 returns the (random) start.
        norm: "linf" or "l2".
        random_start: start from a uniform point of the eps-ball (L-inf: uniform cube; L2: uniform in the ball,
            a Gaussian direction times radius eps * U^(1/d)), drawn per sample from (seed, dataset index).
        targeted: y are target labels and the cross-entropy to them is minimised.
        seed: seed of the random starts.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        targeted: bool = False,
        seed: int = 0,
    ) -> None:
        require(eps >= 0, f"PGD eps must be >= 0, got {eps}")
        require(alpha >= 0, f"PGD alpha must be >= 0, got {alpha}")
        require(isinstance(steps, int) and steps >= 0, f"PGD steps must be an integer >= 0, got {steps!r}")
        require(str(norm).lower() in NORMS, f"PGD norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = steps
        self.norm = str(norm).lower()
        self.random_start = random_start
        self.targeted = targeted
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"PGD(eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, norm={self.norm!r}, "
            f"random_start={self.random_start}, targeted={self.targeted}, seed={self.seed})"
        )

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """Return adversarial images for a batch.

        Args:
            model: classifier mapping images in [0,1] to logits.
            x: images in [0,1], shape [N, ...].
            y: true labels (or target labels when ``targeted``), shape [N].
            index: dataset indices of the samples, shape [N]. None means ``arange(N)``: then the random starts,
                and so the result, depend on how the data were batched.
        """
        if index is None:
            index = torch.arange(len(x), device=x.device)
        require(index.shape == (len(x),), f"PGD index must have shape [{len(x)}], got {list(index.shape)}")
        with eval_mode(model), gradients_on():
            x, y = _usable(x), _usable(y)
            adv = self._start(x, index.to(x.device, non_blocking=True))
            if self.norm == "linf":
                low, high = (x - self.eps).clamp_(min=0), (x + self.eps).clamp_(max=1)
                for _ in range(self.steps):
                    adv = self._linf_step(adv, self._gradient(model, adv, y), low, high)
            else:
                for _ in range(self.steps):
                    adv = self._l2_step(adv, self._gradient(model, adv, y), x)
        return adv.detach()

    def _start(self, x: Tensor, index: Tensor) -> Tensor:
        if not self.random_start or self.eps == 0:
            return x.clone()
        if self.norm == "linf":
            noise = per_sample_uniform(self.seed, index, x.shape[1:]).mul_(2).sub_(1).mul_(self.eps)
        else:
            direction = per_sample_normal(self.seed, index, x.shape[1:])
            # uniform in the d-ball: radius eps * U^(1/d)
            radius = per_sample_uniform(self.seed, index, (1,), stream=1)[:, 0].pow_(1.0 / x[0].numel()).mul_(self.eps)
            noise = direction.mul_(radius.div_(_flat_norm(direction).clamp_min_(_TINY)).view(_per_sample(x)))
        return (x + noise.to(x.dtype)).clamp_(0, 1)

    def _gradient(self, model: nn.Module, adv: Tensor, y: Tensor) -> Tensor:
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")  # sum: a sample's gradient ignores the batch size
        (grad,) = torch.autograd.grad(loss, adv)
        return grad

    def _linf_step(self, adv: Tensor, grad: Tensor, low: Tensor, high: Tensor) -> Tensor:
        step = -self.alpha if self.targeted else self.alpha
        # clamping into [max(x-eps, 0), min(x+eps, 1)] is the projection onto the ball and the box at once
        return adv.detach().add_(grad.sign_(), alpha=step).clamp_(low, high)

    def _l2_step(self, adv: Tensor, grad: Tensor, x: Tensor) -> Tensor:
        step = -self.alpha if self.targeted else self.alpha
        grad = grad.div_(_flat_norm(grad).clamp_min_(_TINY).view(_per_sample(x)))
        delta = adv.detach().add_(grad, alpha=step).sub_(x)
        scale = (self.eps / _flat_norm(delta).clamp_min_(_TINY)).clamp_max_(1.0)
        return delta.mul_(scale.view(_per_sample(x))).add_(x).clamp_(0, 1)


def _flat_norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def _per_sample(x: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts one number per sample over x."""
    return (-1,) + (1,) * (x.dim() - 1)


class AutoAttack:
    """AutoAttack (Croce and Hein 2020) through torchattacks, with the :class:`Attack` call signature.

    A stronger, parameter-free check of the PGD numbers of Zhao et al. 2020 (§5). torchattacks is an optional extra
    (``pip install 'mcrobust[autoattack]'``). It reseeds the global RNG, so the call runs inside ``fork_rng``; its
    randomness is per batch, so unlike :class:`PGD` the result depends on batching (``index`` is ignored).

    Args:
        eps: radius of the perturbation ball in pixel units.
        norm: "linf" or "l2".
        version: torchattacks version: "standard", "plus" or "rand".
        num_classes: number of classes of the model (used by the targeted attacks).
        seed: seed of torchattacks' random starts.
    """

    VERSIONS = ("standard", "plus", "rand")

    def __init__(
        self, eps: float = 8 / 255, norm: str = "linf", version: str = "standard", num_classes: int = 10, seed: int = 0
    ) -> None:
        try:
            import torchattacks
        except ImportError:
            raise ConfigError(
                "AutoAttack needs the optional package torchattacks: pip install 'mcrobust[autoattack]'"
            ) from None
        require(eps >= 0, f"AutoAttack eps must be >= 0, got {eps}")
        require(str(norm).lower() in NORMS, f"AutoAttack norm must be one of {', '.join(NORMS)}, got {norm!r}")
        require(
            version in self.VERSIONS, f"AutoAttack version must be one of {', '.join(self.VERSIONS)}, got {version!r}"
        )
        require(num_classes >= 2, f"AutoAttack num_classes must be >= 2, got {num_classes}")
        self._torchattacks = torchattacks
        self.eps = float(eps)
        self.norm = str(norm).lower()
        self.version = version
        self.num_classes = num_classes
        self.seed = seed

    def __repr__(self) -> str:
        return f"AutoAttack(eps={self.eps:.6g}, norm={self.norm!r}, version={self.version!r}, seed={self.seed})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """Return adversarial images for a batch (see :class:`PGD`; ``index`` is accepted and ignored)."""
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []
        with eval_mode(model), gradients_on(), torch.random.fork_rng(devices=devices):
            attack = self._torchattacks.AutoAttack(
                model,
                norm="Linf" if self.norm == "linf" else "L2",
                eps=self.eps,
                version=self.version,
                n_classes=self.num_classes,
                seed=self.seed,
            )
            return attack(_usable(x), _usable(y)).detach()


def robust_metrics(
    model: nn.Module, attack: Attack, x: Tensor, y: Tensor, index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Attack a batch and return ``(x_adv, logits on x_adv)``, the logits computed in eval mode without gradients.

    Robust accuracy and robustness loss (Zhao et al. 2020, §5) are then plain metrics on the logits.
    """
    x_adv = attack(model, x, y, index)
    with eval_mode(model), torch.no_grad():
        return x_adv, model(x_adv)
