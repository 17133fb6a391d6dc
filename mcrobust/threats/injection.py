"""Fault-sneaking style error injection: change ONE parameter tensor so a few images get attacker labels.

Zhao et al. 2020 (§3, error injection; Zhao et al. 2019, "Fault sneaking attack"): S=4 correctly classified images
must be classified as attacker-chosen labels while a keep set of 996-1000 other correctly classified images keeps its
labels. Only the named tensor changes (official code: the last linear layer of VGG16, the last 3x3 conv of ResNet);
the loss is a weighted hinge on the logits, w=100 for the targets and 1 for the keep set, for at most 500 steps.
Path connection then repairs the injected model (§4).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mcrobust.errors import ConfigError, DataError
from mcrobust.utils.checks import require
from mcrobust.utils.modes import device_of, eval_mode
from mcrobust.utils.seeding import Stream, generator_for

__all__ = [
    "InjectionResult",
    "InjectionSets",
    "choose_injection_sets",
    "inject_errors",
    "injection_loss",
    "injection_metrics",
]


@dataclass
class InjectionSets:
    """The images an injection flips (targets) and the images it must keep; all tensors on the CPU.

    Saved with the run so that every point of a path is measured on the same images (``save``/``load`` write plain
    tensors, readable with ``torch.load(weights_only=True)``). Indices are positions in the image set they were
    chosen from.
    """

    target_index: Tensor  # [S] int64
    target_images: Tensor  # [S, C, H, W]
    target_labels: Tensor  # [S] attacker labels, never the true ones
    keep_index: Tensor  # [K] int64
    keep_images: Tensor  # [K, C, H, W]
    keep_labels: Tensor  # [K] true labels
    target_true_labels: Tensor  # [S] true labels of the targets (to see whether a repair restores them)
    # where the images come from, to check that no image plays two roles: a data split and positions in it
    source_split: str | None = None
    target_origin: Tensor | None = None  # [S] int64 positions in source_split
    keep_origin: Tensor | None = None  # [K] int64 positions in source_split

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors (and the source split's name) by field name; unknown origins are left out."""
        return {
            field.name: getattr(self, field.name) for field in fields(self) if getattr(self, field.name) is not None
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> InjectionSets:
        """Inverse of :meth:`to_dict`; a missing required entry raises DataError naming it."""
        required = [field.name for field in fields(cls) if field.default is MISSING]
        missing = [name for name in required if name not in state]
        if missing:
            raise DataError(f"injection sets lack {', '.join(missing)}")
        return cls(**{field.name: state[field.name] for field in fields(cls) if field.name in state})

    def roles(self) -> dict[str, tuple[str, np.ndarray]]:
        """The targets and the keep set as (split, positions) for the one-role-per-image check; {} if unknown."""
        if self.source_split is None or self.target_origin is None or self.keep_origin is None:
            return {}
        return {
            "injection target set": (self.source_split, self.target_origin.numpy()),
            "injection keep set": (self.source_split, self.keep_origin.numpy()),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the sets with ``torch.save`` (plain tensors only)."""
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InjectionSets:
        """Read sets written by :meth:`save`, safely (``weights_only=True``)."""
        if not os.path.isfile(path):
            raise DataError(f"injection sets file {os.fspath(path)!r} does not exist")
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))


@dataclass
class InjectionResult:
    """Outcome of :func:`inject_errors`.

    Attributes:
        success: fraction of targets classified as their attacker labels.
        keep_acc: fraction of the keep set still classified correctly.
        steps_taken: optimiser steps made (fewer than ``steps`` when the goal was reached early).
        param_name: the one parameter tensor that changed.
        delta_norm: L2 norm of its change.
    """

    success: float
    keep_acc: float
    steps_taken: int
    param_name: str
    delta_norm: float


def _predict(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Predicted classes on the CPU, in eval mode."""
    device = device_of(model)
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(chunk.to(device)).argmax(1).cpu() for chunk in images.split(batch_size)])


def choose_injection_sets(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_targets: int = 4,
    num_keep: int = 1000,
    num_classes: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> InjectionSets:
    """Draw the targets, their attacker labels and the keep set among the images the model classifies correctly.

    The S=4 targets and the keep set (996 in the paper, §3) are disjoint, both correctly classified before injection.

    Args:
        model: the model that will be injected.
        images: candidate images in [0,1], shape [N, ...].
        labels: their true labels, shape [N].
        num_targets: number of images to flip (S).
        num_keep: number of images whose labels must not change.
        num_classes: number of classes; attacker labels are uniform over the other num_classes - 1.
        seed: seed of the draw (a local generator: the global RNG is untouched).
        batch_size: batch size of the forward passes.
    """
    require(len(images) == len(labels), f"got {len(images)} images but {len(labels)} labels")
    require(num_targets >= 1, f"num_targets must be >= 1, got {num_targets}")
    require(num_keep >= 0, f"num_keep must be >= 0, got {num_keep}")
    require(num_classes >= 2, f"num_classes must be >= 2, got {num_classes}")
    labels = labels.cpu().long()
    require(not len(labels) or int(labels.max()) < num_classes, f"a label exceeds num_classes={num_classes}")
    correct = (_predict(model, images, batch_size) == labels).nonzero().squeeze(1)
    needed = num_targets + num_keep
    if len(correct) < needed:
        raise ConfigError(
            f"only {len(correct)} of {len(images)} images are classified correctly, "
            f"but num_targets + num_keep = {needed}; lower num_keep"
        )
    generator = generator_for(seed, Stream.INJECTION_SETS)
    order = correct[torch.randperm(len(correct), generator=generator)]
    target_index, keep_index = order[:num_targets], order[num_targets:needed]
    offset = torch.randint(1, num_classes, (num_targets,), generator=generator)  # never 0: never the true label
    images = images.cpu()
    return InjectionSets(
        target_index=target_index,
        target_images=images[target_index],
        target_labels=(labels[target_index] + offset) % num_classes,
        keep_index=keep_index,
        keep_images=images[keep_index],
        keep_labels=labels[keep_index],
        target_true_labels=labels[target_index],
    )


def _gaps(logits: Tensor, labels: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j per image: positive where the image is classified as its label."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    return own - logits.scatter(1, labels[:, None], float("-inf")).amax(1)


def injection_loss(logits: Tensor, labels: Tensor, weights: Tensor, margin: float = 1.0) -> Tensor:
    """Weighted multi-class hinge: sum_i w_i max(0, max_{j != y_i} z_ij - z_iy_i + margin) (fault sneaking, §3)."""
    return (weights * (margin - _gaps(logits, labels)).clamp_min(0)).sum()


def injection_metrics(model: nn.Module, sets: InjectionSets, batch_size: int = 256) -> dict[str, float]:
    """Injection success (targets classified as attacker labels) and keep accuracy, in eval mode.

    Path evaluation re-measures both at every t (``path/injection_success``, ``path/injection_keep_acc``).
    """
    success = _predict(model, sets.target_images, batch_size) == sets.target_labels.cpu()
    kept = _predict(model, sets.keep_images, batch_size) == sets.keep_labels.cpu()
    return {"success": _mean(success), "keep_acc": _mean(kept)}


def _mean(hits: Tensor) -> float:
    return hits.float().mean().item() if len(hits) else 1.0


def _named_parameter(model: nn.Module, name: str) -> nn.Parameter:
    params = dict(model.named_parameters())
    if name not in params:
        names = list(params)
        shown = names if len(names) <= 6 else [*names[:2], "...", *names[-3:]]
        raise ConfigError(f"the net has no parameter {name!r}; it has {len(names)}: {', '.join(shown)}")
    return params[name]


@contextmanager
def _only_trainable(model: nn.Module, param: nn.Parameter) -> Iterator[None]:
    """Let autograd reach ``param`` alone; give every parameter back its requires_grad and ``param`` its grad."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    previous_grad = param.grad
    try:
        for p, _ in flags:
            p.requires_grad_(p is param)
        param.grad = None
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        param.grad = previous_grad


def _loss_pass(
    model: nn.Module, images: Tensor, labels: Tensor, weights: Tensor, margin: float, batch_size: int
) -> Tensor:
    """Accumulate the loss gradient over the whole injection set in chunks; return the per-image gaps."""
    gaps = []
    for chunk, chunk_labels, chunk_weights in zip(
        images.split(batch_size), labels.split(batch_size), weights.split(batch_size), strict=True
    ):
        logits = model(chunk)
        injection_loss(logits, chunk_labels, chunk_weights, margin).backward()
        gaps.append(_gaps(logits.detach(), chunk_labels))
    return torch.cat(gaps)


def inject_errors(
    model: nn.Module,
    param_name: str,
    sets: InjectionSets,
    steps: int = 500,
    lr: float = 1e-3,
    target_weight: float = 100.0,
    margin: float = 1.0,
    batch_size: int = 256,
) -> InjectionResult:
    """Change the parameter ``param_name`` of ``model`` in place until the targets take their attacker labels.

    Adam on the weighted hinge of :func:`injection_loss` (Adam is scale-free, so the weights set the balance between
    targets and keep set, not the step size), full batch over targets + keep set, model in eval mode (BN statistics
    do not change), every other parameter frozen. Stops as soon as every target has its attacker label by at least
    the margin and every keep image still has its true label, after at most ``steps`` steps. Copy the model first
    to keep the original.

    Args:
        model: the trained model; modified in place.
        param_name: name of the one parameter tensor to change (as in ``model.named_parameters()``).
        sets: targets with attacker labels and the keep set, from :func:`choose_injection_sets`.
        steps: maximum number of Adam steps (500 in the paper).
        lr: Adam learning rate.
        target_weight: hinge weight of each target (100 in the paper); keep images weigh 1.
        margin: hinge margin on the logits.
        batch_size: images per forward pass; the gradient is accumulated over the whole set.
    """
    param = _named_parameter(model, param_name)
    require(steps >= 0, f"injection steps must be >= 0, got {steps}")
    require(lr > 0 and target_weight > 0, f"injection lr and target_weight must be > 0, got {lr}, {target_weight}")
    require(margin >= 0 and batch_size >= 1, f"need margin >= 0 and batch_size >= 1, got {margin}, {batch_size}")
    device, num_targets = param.device, len(sets.target_labels)
    images = torch.cat([sets.target_images, sets.keep_images]).to(device, param.dtype)
    labels = torch.cat([sets.target_labels, sets.keep_labels]).to(device)
    weights = torch.ones(len(labels), device=device, dtype=param.dtype)
    weights[:num_targets] = target_weight
    before = param.detach().clone()
    optimizer = torch.optim.Adam([param], lr=lr)
    steps_taken = 0
    with eval_mode(model), _only_trainable(model, param):
        while True:
            optimizer.zero_grad(set_to_none=True)
            gaps = _loss_pass(model, images, labels, weights, margin, batch_size)  # of the current parameters
            hits = gaps > 0
            # targets must clear the margin, so that re-measuring (other batching, rounding) still finds them flipped
            done = torch.cat([hits[:num_targets] & (gaps[:num_targets] >= margin), hits[num_targets:]])
            if steps_taken == steps or bool(done.all()):
                break
            optimizer.step()
            steps_taken += 1
    return InjectionResult(
        success=_mean(hits[:num_targets]),
        keep_acc=_mean(hits[num_targets:]),
        steps_taken=steps_taken,
        param_name=param_name,
        delta_norm=torch.linalg.vector_norm(param.detach() - before).item(),
    )
