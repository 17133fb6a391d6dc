"""Choose the t to export without looking at the trigger: held-out bonafide accuracy only (Zhao et al. 2020, §4).

The defender knows neither the trigger nor the injected images, so the choice may use only clean data it owns. Along
a repaired path the attack dies a short distance from each endpoint while clean accuracy stays near the endpoints',
so the rule prefers the point farthest from both tampered models (t = 0.5) among those whose held-out accuracy is
about as good as the best interior point's. With one tampered model (t = 0) joined to a purified copy of it (t = 1),
``target=1`` prefers the point farthest from the tampered model instead (`mcrobust repair` with selection 'far',
docs/one_model.md): there the backdoor may die anywhere along the path, not near t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcrobust.errors import ConfigError

__all__ = ["SelectionResult", "select_scanned", "select_t", "standard_error_tolerance"]

# |t - target| is compared after rounding, so grid points equally far from the target tie despite float error
# (0.6 - 0.5 != 0.5 - 0.4 in binary floating point).
_DISTANCE_DIGITS = 9
# Slack on the tolerance, so "within 0.02" includes a value exactly 0.02 below the best despite float error.
_SLACK = 1e-12


@dataclass(frozen=True)
class SelectionResult:
    """The chosen t, the rule that chose it (one sentence for ``path_summary.json``) and the admissible grid points.

    Attributes:
        t: the chosen point of the path.
        rule: how it was chosen, in words, with the numbers used.
        candidates: interior t whose value is within the tolerance of the best (the explicit t alone when given).
    """

    t: float
    rule: str
    candidates: tuple[float, ...]


def _interior_values(rows: Sequence[Mapping[str, Any]], column: str) -> list[tuple[float, float]]:
    """(t, value) of the interior rows (0 < t < 1) with a finite value, or a ConfigError saying what is missing."""
    if any("t" not in row for row in rows):
        raise ConfigError("every row of a path table needs a 't'")
    if not any(column in row for row in rows):
        present = sorted({name for row in rows for name in row} - {"t"})
        raise ConfigError(f"cannot select t: no column {column!r} in the path table (it has {', '.join(present)})")
    pairs = []
    for row in rows:
        t, value = float(row["t"]), row.get(column)
        if 0 < t < 1 and value is not None and math.isfinite(float(value)):
            pairs.append((t, float(value)))
    if not pairs:
        raise ConfigError(f"cannot select t: no interior grid point (0 < t < 1) has a value of {column!r}")
    return pairs


def standard_error_tolerance(best: float, count: int) -> float:
    """One binomial standard error of the best accuracy measured on `count` images, and at least one image.

    With a few dozen held-out images one image moves the accuracy by several points, so a fixed 0.02 turns noise
    into a choice (it picked t=0.7, ASR 0.32, over t=0.5, ASR 0.05, on 30 held-out digits).
    """
    if count < 1:
        raise ConfigError(f"an automatic selection tolerance needs the number of held-out images, got {count}")
    return max(math.sqrt(max(best * (1 - best), 0.0) / count), 1.0 / count)


def select_t(
    rows: Sequence[Mapping[str, Any]],
    column: str = "holdout_acc",
    tolerance: float | None = 0.02,
    target: float = 0.5,
    explicit: float | None = None,
    count: int | None = None,
) -> SelectionResult:
    """Pick the interior grid point closest to ``target`` whose ``column`` is within ``tolerance`` of the best.

    Never t=0 or t=1: those are the tampered models themselves. Ties go to the smaller |t - target|, then the
    smaller t. ``column`` must be measured on bonafide data held out from path training (never the triggered set).

    Args:
        rows: the path table, one row per t (``{"t": ..., column: ...}``); unused when ``explicit`` is given.
        column: higher-is-better column measured on held-out bonafide data.
        tolerance: how far below the best interior value a point may be and still qualify (absolute, a fraction);
            None: one standard error of the best value on `count` held-out images (at least one image).
        target: the preferred t; 0.5 is farthest from both endpoints, 1.0 farthest from a single tampered model at
            t=0 (the interior point nearest its purified copy).
        explicit: a t chosen by the user, in [0, 1]; returned as is, bypassing the rule.
        count: how many held-out images the column was measured on (needed when tolerance is None).
    """
    if explicit is not None:
        if not (math.isfinite(explicit) and 0 <= explicit <= 1):
            raise ConfigError(f"an explicit t must lie in [0, 1], got {explicit}")
        return SelectionResult(float(explicit), f"explicit t = {explicit:g}, set by the user", (float(explicit),))
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"selection tolerance must be >= 0, got {tolerance}")
    if not (math.isfinite(target) and 0 <= target <= 1):
        raise ConfigError(f"selection target must lie in [0, 1], got {target}")
    pairs = _interior_values(rows, column)
    best = max(value for _, value in pairs)
    if tolerance is None:
        tolerance = standard_error_tolerance(best, count or 0)
    candidates = sorted(t for t, value in pairs if value >= best - tolerance - _SLACK)
    chosen = min(candidates, key=lambda t: (round(abs(t - target), _DISTANCE_DIGITS), t))
    rule = (
        f"among interior grid points (0 < t < 1), the t closest to {target:g} whose {column} is within "
        f"{tolerance:.4g} of the best interior {column} ({best:.4f}); ties go to the smaller |t - {target:g}|, "
        "then the smaller t"
    )
    return SelectionResult(chosen, rule, tuple(candidates))


def select_scanned(
    rows: Sequence[Mapping[str, Any]],
    cleared: Callable[[float], bool],
    tolerance: float | None = None,
    count: int | None = None,
    widen: float = 2.0,
    column: str = "holdout_acc",
    start: float = 0.0,
) -> SelectionResult | None:
    """The interior t nearest the model (t = 0) that a trigger-free scan clears, among the points the holdout accepts.

    The points within ``tolerance`` of the best interior ``column`` are tried first, nearest to the model first (it
    keeps the most clean accuracy); then those within ``widen`` times the tolerance (security before one more standard
    error of clean accuracy). ``cleared(t)`` runs the scan of the point at t, so it is called only until one passes.
    Points nearer the model than ``start`` are never tried: with ``start`` at the paper's middle point the scan can
    only veto a point and move away from the model, so a scan blind to the trigger costs nothing against that rule.
    None when no point passes: the caller falls back to its holdout rule and warns.
    """
    pairs = _interior_values(rows, column)
    best = max(value for _, value in pairs)
    if tolerance is None:
        tolerance = standard_error_tolerance(best, count or 0)
    if not (math.isfinite(tolerance) and tolerance >= 0) or widen < 1:
        raise ConfigError(f"selection tolerance must be >= 0 and widen >= 1, got {tolerance} and {widen}")
    tried: set[float] = set()
    for allowed in (tolerance, widen * tolerance):
        for t in sorted(t for t, value in pairs if value >= best - allowed - _SLACK and t not in tried and t >= start):
            tried.add(t)
            if cleared(t):
                where = "the model" if start <= 0 else f"the model, from t = {start:g} on,"
                rule = (
                    f"the interior t closest to {where} that the suspect scan clears, among those whose {column} is "
                    f"within {allowed:.4g} of the best interior {column} ({best:.4f}); points within {tolerance:.4g} "
                    f"are tried first, then within {widen:g} times that"
                )
                return SelectionResult(t, rule, tuple(sorted(tried)))
    return None
