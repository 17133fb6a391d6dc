"""Universal adversarial perturbations: one L2-bounded delta, shared by every image of a batch.

A backdoor trigger is such a perturbation (small, input-agnostic, and it sends most inputs to one class), so the
strongest one a model admits is where adversarial unlearning (I-BAU, Zeng et al. 2022) looks for the trigger
without knowing it, and the class that the smallest targeted one reaches is Neural Cleanse's suspect (Wang et al.
2019). torchattacks and friends attack per sample only, hence these short loops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcrobust.utils.modes import eval_mode, gradients_on

_TINY = 1e-12  # guards the division by a zero gradient norm (as in threats/evasion.py)


def project_l2(delta: Tensor, eps: float) -> Tensor:
    """`delta` scaled back onto the L2 ball of radius `eps` when it lies outside."""
    return delta * (eps / delta.norm().clamp_min(eps))


def universal_perturbation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    start: Tensor | None = None,
    target: int | None = None,
) -> Tensor:
    """Normalised-gradient steps on the batch's mean cross-entropy of ``model(clamp(x + delta))``.

    Args:
        model: pixels in [0,1] to logits; run in eval mode (BN statistics untouched), its parameters' grads untouched.
        x, y: a batch of images in [0,1] and their true labels.
        eps: L2 radius of delta in pixel units (a 3x3 white patch on CIFAR-10 images: 2.3 on average, up to 4.9).
        steps: steps, each of length 2.5 eps / steps (the PGD convention); 0 returns the start.
        start: where the search starts (a warm start from the previous batch); None: zero.
        target: None: ascend the loss of the true labels (untargeted); a class: descend the loss of that class.

    Returns:
        delta, of the shape of one image, detached, with ||delta||_2 <= eps.
    """
    delta = torch.zeros_like(x[0]) if start is None else project_l2(start.detach().to(x), eps)
    labels, sign = (y, 1.0) if target is None else (torch.full_like(y, target), -1.0)
    step = sign * 2.5 * eps / max(steps, 1)
    with eval_mode(model), gradients_on():
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model((x.detach() + delta).clamp(0, 1)), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = project_l2(delta.detach() + step * grad / grad.norm().clamp_min(_TINY), eps)
    return delta.detach()


def easiest_target(
    model: nn.Module, x: Tensor, y: Tensor, deltas: Tensor, eps: float, steps: int
) -> tuple[int, Tensor, Tensor]:
    """The class a targeted universal perturbation of radius `eps` sends most of the batch to (the suspect).

    Args:
        model, x, y, eps, steps: as for :func:`universal_perturbation`.
        deltas: one warm start per class, shape (num_classes, *image).

    Returns:
        (the suspected class, the refined deltas, each delta's success rate on the batch's images neither
        labelled nor predicted as that class).
    """
    refined = torch.stack([universal_perturbation(model, x, y, eps, steps, d, c) for c, d in enumerate(deltas)])
    success = torch.zeros(len(deltas))
    with torch.no_grad(), eval_mode(model):
        predicted = model(x).argmax(1)
        for c, d in enumerate(refined):
            others = (y != c) & (predicted != c)  # images already in c say nothing of how easily it is reached
            if others.any():
                success[c] = (model((x[others] + d).clamp(0, 1)).argmax(1) == c).float().mean()
    return int(success.argmax()), refined, success
