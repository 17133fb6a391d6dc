"""How far a repaired point moved from the tampered model, measured without the trigger (issue 14's warning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def distance_signals(tampered: nn.Module, repaired: nn.Module, loader: Any) -> dict[str, float]:
    """How far the exported point moved from the tampered model, measured without the trigger (clean holdout).

    relative_weight_distance = ||w - w_tampered|| / ||w_tampered|| over the parameters; changed_predictions = the
    fraction of holdout images whose predicted class differs; logit_agreement = the mean cosine similarity of the
    two models' centred logits. A point that sits in the tampered model's basin scores ~0 / ~0 / ~1.
    """
    tampered_params = dict(tampered.named_parameters())
    squared = sum(
        float((p.detach().cpu() - tampered_params[n].detach().cpu()).pow(2).sum())
        for n, p in repaired.named_parameters()
    )
    norm = sum(float(p.detach().cpu().pow(2).sum()) for p in tampered_params.values())
    changed, cosines, count = 0, 0.0, 0
    tampered.eval(), repaired.eval()
    with torch.no_grad():
        for batch in loader:
            x = batch[0]
            a, b = tampered.cpu()(x), repaired.cpu()(x)
            changed += int((a.argmax(1) != b.argmax(1)).sum())
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            cosines += float(torch.nn.functional.cosine_similarity(a, b, dim=1).sum())
            count += len(x)
    return {
        "relative_weight_distance": float(np.sqrt(squared / max(norm, 1e-12))),
        "changed_predictions": changed / max(count, 1),
        "logit_agreement": cosines / max(count, 1),
    }
