"""Evasion attacks in pixel space: PGD (L-inf, L2) and a wrapper around torchattacks' AutoAttack.

Zhao et al. 2020 (§3, §5) measure robustness along a path with L-inf PGD (eps 8/255, step 2/255, 10 steps, uniform
random start) on inputs in [0,1]; every net normalises in its first layer, so the eps-ball lives in pixel space.

Random starts are drawn per sample from a counter-based hash of (seed, stream, dataset index, element position):
exact 32-bit integer arithmetic, vectorised on the input's device, with no generator state, no host sync and no
Python loop. A sample's start therefore does not depend on batch size, batch composition, DDP sharding or the device,
and costs about what ``torch.rand`` costs for the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcrobust.errors import ConfigError

__all__ = [
    "PGD",
    "Attack",
    "AutoAttack",
    "eval_mode",
    "per_sample_normal",
    "per_sample_uniform",
    "robust_metrics",
]

NORMS = ("linf", "l2")
_MASK32 = 0xFFFFFFFF
_TINY = 1e-12  # guards divisions by a zero gradient or perturbation norm


@runtime_checkable
class Attack(Protocol):
    """Anything called as ``attack(model, x, y, index) -> x_adv`` with x, x_adv images in [0,1]."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor: ...


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then give each one back its own previous mode.

    Attacks and error injection must not touch BatchNorm statistics; restoring per module (not ``model.train()``)
    keeps e.g. a frozen BN inside a training model frozen.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:  # pre-order: a parent's train() is overridden by its children's own flags
            module.train(training)


@contextmanager
def _gradients_on() -> Iterator[None]:
    """Enable autograd locally, even inside ``no_grad`` or ``inference_mode`` (a validation step)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _mix32_(x: Tensor) -> Tensor:
    """Hash int64 tensors holding 32-bit values in place; a bijection on [0, 2^32).

    Two multiply-xorshift rounds with the constants of Wellons' hash-prospector ([16 21f0aaad 15 735a2d97 15]).
    Both multipliers are below 2^31, so every product fits in int64 exactly: identical bits on every device.
    """
    x.bitwise_xor_(x >> 16).mul_(0x21F0AAAD).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 15).mul_(0x735A2D97).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 15)


def _mix32(value: int) -> int:
    return int(_mix32_(torch.tensor(value & _MASK32, dtype=torch.int64)))


def per_sample_uniform(seed: int, index: Tensor, shape: Sequence[int], stream: int = 0) -> Tensor:
    """Uniform numbers in [0, 1) of shape ``[len(index), *shape]``, a pure function of (seed, stream, index, position).

    Why: evaluation randomness (PGD starts, power-iteration vectors) must not depend on batching or DDP sharding
    (docs/architecture.md), so each sample's numbers come from its dataset index, never from a shared generator state.
    Distinct indices in [0, 2^32) get distinct keys; 24 random bits per number.

    Args:
        seed: run seed (its low 32 bits are used).
        index: dataset indices of the samples, integer tensor of shape [N]; the result lives on its device.
        shape: shape of one sample's numbers.
        stream: independent stream number, for several draws per sample.
    """
    seed_key = _mix32(seed)
    stream_key = _mix32(seed_key ^ _mix32(stream + 0x9E3779B9))
    keys = _mix32_(_mix32_((index.to(torch.int64).reshape(-1, 1) & _MASK32) ^ seed_key) ^ stream_key)
    positions = _mix32_(torch.arange(math.prod(shape), device=index.device, dtype=torch.int64))
    bits = _mix32_(keys ^ positions) >> 8
    return bits.to(torch.float32).mul_(2.0**-24).view(len(keys), *shape)


def per_sample_normal(seed: int, index: Tensor, shape: Sequence[int], stream: int = 0) -> Tensor:
    """Standard normal numbers per sample (Box-Muller on :func:`per_sample_uniform`); same guarantees.

    Args:
        seed: run seed (its low 32 bits are used).
        index: dataset indices of the samples, integer tensor of shape [N].
        shape: shape of one sample's numbers.
        stream: independent stream number, for several draws per sample.
    """
    uniform = per_sample_uniform(seed, index, (2, *shape), stream)
    radius = torch.log1p(-uniform[:, 0]).mul_(-2.0).sqrt_()  # 1 - u in (0, 1]: finite
    return radius.mul_(torch.cos(uniform[:, 1].mul_(2.0 * math.pi)))


def _usable(t: Tensor) -> Tensor:
    """A tensor autograd may save: inference tensors (made under ``inference_mode``) are copied."""
    return t.clone() if t.is_inference() else t.detach()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
        _check(eps >= 0, f"PGD eps must be >= 0, got {eps}")
        _check(alpha >= 0, f"PGD alpha must be >= 0, got {alpha}")
        _check(isinstance(steps, int) and steps >= 0, f"PGD steps must be an integer >= 0, got {steps!r}")
        _check(str(norm).lower() in NORMS, f"PGD norm must be one of {', '.join(NORMS)}, got {norm!r}")
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
        _check(index.shape == (len(x),), f"PGD index must have shape [{len(x)}], got {list(index.shape)}")
        with eval_mode(model), _gradients_on():
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
        _check(eps >= 0, f"AutoAttack eps must be >= 0, got {eps}")
        _check(str(norm).lower() in NORMS, f"AutoAttack norm must be one of {', '.join(NORMS)}, got {norm!r}")
        _check(
            version in self.VERSIONS, f"AutoAttack version must be one of {', '.join(self.VERSIONS)}, got {version!r}"
        )
        _check(num_classes >= 2, f"AutoAttack num_classes must be >= 2, got {num_classes}")
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
        with eval_mode(model), _gradients_on(), torch.random.fork_rng(devices=devices):
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
