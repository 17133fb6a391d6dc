"""Selections 'scan' and 'veto' of a one-model repair: points of the path that a trigger-free scan clears.

'scan' exports the accepted point nearest the model that the scan clears; 'veto' starts at the paper's middle point
and lets the scan only move t away from the model. The rule itself is `paths.selection.select_scanned` and the scan
`analysis.suspect`; this stage runs them on a trained path of a `RepairChain` (the points, their BN statistics and
the holdout images come from it).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mcrobust.analysis.suspect import SuspectScan, scan_classes
from mcrobust.callbacks.path_evaluation import PathEvaluation
from mcrobust.io.tables import write_json
from mcrobust.paths.selection import SelectionResult, select_scanned, select_t
from mcrobust.pipeline.chain import RepairChain
from mcrobust.systems import CurveSystem

SCAN_IMAGES = 500
"""Holdout images the suspect scan of selection 'scan' runs on (each point costs classes x steps passes of them)."""
SCAN_RATIO, SCAN_MIN_REACH = 1.5, 0.3
"""A point still carries the model's suspect when that class is reached from over 30% of the holdout images and over
1.5 times the median class's rate (`SuspectScan.stands_out`), whether it leads the scan or not (until 2026-12-06 it
had to lead: two held-out CIFAR-10 points kept ASR 0.63 and 0.81 while another class led). The floor lies between
the lowest reach of a point that still carried a backdoor on the CIFAR-10 grid (0.42, ASR 0.13) and the leader's at a
clean digits point (0.26): fitted on those data, docs/results.md."""


def scan_selection(chain: RepairChain, system: CurveSystem, evaluation: PathEvaluation) -> tuple[float, str, bool]:
    """Selection 'scan' or 'veto' (`chain.settings.selection`): a point the holdout accepts and the suspect scan clears.

    The model (t = 0) is scanned on the holdout images for the class its universal perturbation reaches most easily;
    a point is cleared when that class no longer stands out there (`SuspectScan.stands_out`), whether or not another
    class now leads. 'scan' tries the accepted points nearest the model first; 'veto' tries them from the paper's
    middle point (`select_t`, target 0.5) outward. The scanned points' columns join `evaluation.rows`. Returns (t,
    the rule in words, whether a point was cleared); with none cleared, the holdout's far rule's t.
    """
    x, y = scan_images(chain)
    settings = chain.settings
    radius = float(settings.unlearn_eps)  # 'auto' was resolved before the second end (resolve_radius)
    scans: dict[float, SuspectScan] = {}

    def scanned(t: float) -> SuspectScan:
        if t not in scans:
            scans[t] = scan_classes(chain.point(system, t), x, y, radius, settings.unlearn_steps)
        return scans[t]

    suspect = scanned(0.0).suspect
    count = getattr(evaluation, "holdout_count", None)
    tolerance = settings.selection_tolerance
    choice = scanned_choice(evaluation.rows, scanned, settings.selection, tolerance, count)
    for row in evaluation.rows:
        if float(row["t"]) in scans:
            row.update(scans[float(row["t"])].as_row(suspect))
    if choice is None:
        far = select_t(evaluation.rows, tolerance=tolerance, target=1.0, count=count)
        t, rule = far.t, f"no point was cleared by the suspect scan (class {suspect} stands out); {far.rule}"
    else:
        t, rule = choice.t, f"{choice.rule} (the model's suspect class: {suspect})"
    evaluation.summary.update(selected_t=t, rule=rule)
    write_json(chain.out / "path_summary.json", evaluation.summary)
    print(f"selected t = {t} by the suspect scan ({rule})")
    return t, rule, choice is not None


def scanned_choice(
    rows: Sequence[Mapping[str, Any]],
    scan_at: Callable[[float], SuspectScan],
    selection: str,
    tolerance: float | None,
    count: int | None,
    must_lead: bool = False,
) -> SelectionResult | None:
    """The rule of 'scan' or 'veto' on a path table, given the scan of the point at t (`scan_at(0)`: the model).

    Pure apart from `scan_at`, which is called only for the points tried, so the grid script replays it offline from
    stored scans. `must_lead` is the scan as it ran until 2026-12-06. None when no point is cleared.
    """
    suspect = scan_at(0.0).suspect
    start = select_t(rows, tolerance=tolerance, target=0.5, count=count).t if selection == "veto" else 0.0

    def cleared(t: float) -> bool:
        return not scan_at(t).stands_out(suspect, SCAN_RATIO, SCAN_MIN_REACH, must_lead=must_lead)

    return select_scanned(rows, cleared, tolerance, count, start=start)


def scan_images(chain: RepairChain) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to SCAN_IMAGES clean holdout images and labels, in the model's pixel space."""
    images, labels, total = [], [], 0
    data = chain.datamodule
    data.setup("fit")  # idempotent; before the first stage ('auto' radius) Lightning has not set it up yet
    for batch in data.eval_dataloader(data.bonafide_dataset("holdout")):
        images.append(batch[0])
        labels.append(batch[1])
        total += len(batch[0])
        if total >= SCAN_IMAGES:
            break
    return torch.cat(images)[:SCAN_IMAGES], torch.cat(labels)[:SCAN_IMAGES]


RADIUS_LADDER = (3.0, 2.0, 1.5, 1.0)
"""The unlearning radii 'auto' tries on 32x32 images, largest first (pixel units; the CIFAR-10 grid of docs/results.md
measured 3, 2 and 1.5); scaled with the square root of the pixel count for other sizes."""
RADIUS_REACH_LIMIT = 0.6
"""'auto' takes the largest radius at which the model's median class reach is at most this (the smallest radius when
none is). A model that its universal perturbations move everywhere (converged CIFAR-10 nets at radius 3: median reach
0.66-0.86) is unlearned and scanned at a smaller radius, where unlearning costs less clean accuracy and the suspect
class can still stand out; the 48,000-image models of the grid (0.01-0.46 at radius 3) keep 3. Fitted on those 12
cells and held out on two more converged ones (0.65 and 0.77: radius 2, both repaired), docs/results.md (2026-12-07).
Its known blind spot: converged models with a noise-blend backdoor reach no class at radius 3 (median 0.00), keep 3,
and lose 13-15 points to unlearning there (docs/results.md, fourth stop of 2026-12-07)."""


def resolve_radius(chain: RepairChain, model: torch.nn.Module) -> float:
    """`settings.unlearn_eps`, with 'auto' resolved by :func:`calibrated_radius` on the holdout images and on `model`
    with its BN statistics recomputed as at the path's t = 0; cached in `steps/radius.json` (a resumed repair keeps
    its radius)."""
    settings = chain.settings
    if settings.unlearn_eps != "auto":
        return float(settings.unlearn_eps)
    record = chain.steps / "radius.json"
    if record.is_file():
        return float(json.loads(record.read_text())["radius"])
    x, y = scan_images(chain)
    as_at_t0 = chain.with_bonafide_bn(copy.deepcopy(model))  # as the path's t = 0 point, which the scan sees later
    radius, medians = calibrated_radius(as_at_t0, x, y, settings.unlearn_steps)
    write_json(record, {"radius": radius, "median_reach": medians, "limit": RADIUS_REACH_LIMIT})
    tried = ", ".join(f"{median:.2f} at {r}" for r, median in medians.items())
    print(f"unlearning radius {radius:g} ('auto': the model's median class reach {tried})")
    return radius


def calibrated_radius(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int
) -> tuple[float, dict[str, float]]:
    """The largest radius of `RADIUS_LADDER` (scaled to the images' size) at which the median class reach of `model`
    on (x, y) is at most `RADIUS_REACH_LIMIT` (else the smallest), and the median reach at every radius tried."""
    scale = math.sqrt(x.shape[-2] * x.shape[-1] / 32**2)  # an L2 radius grows with the root of the pixel count
    medians: dict[str, float] = {}
    for radius in (round(r * scale, 4) for r in RADIUS_LADDER):
        medians[f"{radius:g}"] = scan_classes(model, x, y, radius, steps).median_reach
        if medians[f"{radius:g}"] <= RADIUS_REACH_LIMIT:
            break
    return radius, medians
