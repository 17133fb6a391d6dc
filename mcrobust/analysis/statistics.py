"""Statistics over a path table: correlations, bootstrap intervals, loss barriers (Zhao et al. 2020, §5), and the
Wilson interval of an accuracy measured on n images.

The paper reports, per path, the Pearson correlation between the robustness loss and the input-Hessian top
eigenvalue, and barriers: a standard-loss path with no barrier can still have a barrier in robustness loss. The
numbers come from ``scipy.stats``; this module only makes them NaN-safe and JSON-ready.

NaN convention: pairs where either value is missing or not finite are dropped; fewer than 3 remaining points or a
constant column gives NaN (``None`` in the JSON summary), never a warning or an error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from mcrobust.errors import ConfigError

__all__ = [
    "BARRIER_RULE",
    "barrier_height",
    "barrier_heights",
    "bootstrap_pearson_interval",
    "pearson",
    "spearman",
    "summarize_path",
    "wilson_interval",
]

PEARSON_COLUMNS = ("robust_loss", "hessian_top_eig")
BARRIER_RULE = (
    "largest interior value minus the larger endpoint value (endpoints: smallest and largest t); accuracy "
    "columns (*_acc and ra) are measured on their error 1 - acc, so a positive barrier is a dip in accuracy"
)
_NOT_METRICS = ("_std", "_q25", "_q75")  # spreads of a metric, not metrics of their own
_COUNTS = ("n_clean", "n_triggered")
_MIN_POINTS = 3


def _finite_pairs(x: Iterable[Any], y: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Both columns as float arrays, without the pairs where either value is None, NaN or infinite."""
    xs, ys = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ConfigError(f"need two 1-D columns of equal length, got shapes {xs.shape} and {ys.shape}")
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]


def _degenerate(x: np.ndarray, y: np.ndarray) -> bool:
    return len(x) < _MIN_POINTS or np.ptp(x) == 0 or np.ptp(y) == 0


def pearson(x: Iterable[Any], y: Iterable[Any]) -> float:
    """Pearson correlation of two columns (``scipy.stats.pearsonr``); NaN for fewer than 3 points or a constant one.

    The paper's robustness-loss vs. input-Hessian correlation (§5).
    """
    xs, ys = _finite_pairs(x, y)
    return math.nan if _degenerate(xs, ys) else float(stats.pearsonr(xs, ys).statistic)


def spearman(x: Iterable[Any], y: Iterable[Any]) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``); NaN for fewer than 3 points or a constant column.

    A check of the Pearson number that needs only a monotone, not a linear, relation.
    """
    xs, ys = _finite_pairs(x, y)
    return math.nan if _degenerate(xs, ys) else float(stats.spearmanr(xs, ys).statistic)


def _pearson_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(stats.pearsonr(x, y, axis=axis).statistic)


def bootstrap_pearson_interval(
    x: Iterable[Any], y: Iterable[Any], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """BCa bootstrap confidence interval of the Pearson correlation, resampling (x, y) pairs together.

    ``scipy.stats.bootstrap(paired=True)`` with a seeded generator, so the interval is deterministic per seed. A path
    has few points (11-31), so the interval says how much the reported r can be trusted. (NaN, NaN) where
    :func:`pearson` is NaN or where resamples with a constant column leave the interval undefined.

    Args:
        x: first column.
        y: second column, paired with x.
        confidence: confidence level in (0, 1).
        resamples: number of bootstrap resamples.
        seed: seed of the resampling.
    """
    if not 0 < confidence < 1 or resamples < 1:
        raise ConfigError(f"need 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    xs, ys = _finite_pairs(x, y)
    if _degenerate(xs, ys):
        return math.nan, math.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # resamples with a constant column warn; they make the interval NaN
        result = stats.bootstrap(
            (xs, ys),
            _pearson_along,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (math.nan, math.nan)


def wilson_interval(fraction: float, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a fraction k/n measured on n images (``scipy.stats.binomtest(...).proportion_ci``).

    How far clean accuracy, ASR or RA on a few hundred images can be from the model's true rate; unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0 and 1 (an ASR of 0). None when n < 1, or when the
    fraction is not a count over n (e.g. a mean over several noisy models), where a binomial interval is wrong.

    Args:
        fraction: the measured fraction, k/n.
        n: number of images it was measured on.
        confidence: confidence level in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"need 0 < confidence < 1, got {confidence}")
    if n < 1 or not math.isfinite(fraction):
        return None
    k = round(fraction * n)
    if abs(k - fraction * n) > 1e-6 * n or not 0 <= k <= n:
        return None
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def barrier_height(ts: Iterable[Any], values: Iterable[Any]) -> float:
    """Largest interior value minus the larger endpoint value; positive means a barrier, negative none.

    Endpoints are the rows with the smallest and largest t (for a path: the two trained models), interior values
    are all others (NaN interior values are ignored). NaN with fewer than 3 points, no finite interior value or a
    NaN endpoint. The barrier of mode connectivity (Garipov et al. 2018; Zhao et al. 2020, §5).
    """
    t, v = np.asarray(list(ts), dtype=float), np.asarray(list(values), dtype=float)
    if t.shape != v.shape or t.ndim != 1:
        raise ConfigError(f"need t and values of equal length, got shapes {t.shape} and {v.shape}")
    if len(t) < _MIN_POINTS:
        return math.nan
    v = v[np.argsort(t, kind="stable")]
    interior = v[1:-1][np.isfinite(v[1:-1])]
    if len(interior) == 0:
        return math.nan
    return float(interior.max() - np.maximum(v[0], v[-1]))


def _metric_columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric columns of a table other than t, the counts and the spreads (``*_std``, quartiles), first seen first."""
    names: dict[str, None] = {}
    for row in table:
        for name, value in row.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and name not in ("t", *_COUNTS) and not name.endswith(_NOT_METRICS):
                names.setdefault(name)
    return list(names)


def _column(table: Sequence[Mapping[str, Any]], name: str) -> list[float]:
    return [math.nan if row.get(name) is None else float(row[name]) for row in table]


def barrier_heights(table: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> dict[str, float]:
    """:func:`barrier_height` of each column of a path table (rows with a ``t``), accuracies on their error.

    For an accuracy column (``*_acc``, and ``ra``, the triggered images' accuracy on their true class) the barrier is
    that of the error ``1 - acc``, so for every column a positive number means the path is worse somewhere inside
    than at its worse endpoint (see ``BARRIER_RULE``).

    Args:
        table: rows ``{"t": ..., column: value, ...}``.
        columns: columns to measure; None takes every numeric column but t, the counts and the spreads.
    """
    if any("t" not in row for row in table):
        raise ConfigError("every row of a path table needs a 't'")
    ts = [float(row["t"]) for row in table]
    barriers = {}
    for name in _metric_columns(table) if columns is None else columns:
        values = np.asarray(_column(table, name))
        barriers[name] = barrier_height(ts, -values if _is_accuracy(name) else values)
    return barriers


def _is_accuracy(name: str) -> bool:
    return name.endswith("_acc") or name == "ra"


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarize_path(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-ready summary of a path table (``path_summary.json``): correlations, barriers and settings.

    ``pearson``, ``pearson_ci95`` (bootstrap, seed 0) and ``spearman`` relate robust_loss to hessian_top_eig (§5)
    and are null unless both columns exist and are defined; ``barriers`` holds :func:`barrier_heights` of every
    metric column; NaN becomes null. Callers add ``selected_t`` and the like.

    Args:
        rows: the path table, one row per t.
        settings: how the table was made (attack, Hessian settings, BN data, ...), copied into the summary.
    """
    if any("t" not in row for row in rows):
        raise ConfigError("every row of a path table needs a 't'")
    points = sorted(rows, key=lambda row: float(row["t"]))
    has_pair = all(any(name in row for row in points) for name in PEARSON_COLUMNS)
    r = rho = math.nan
    interval = (math.nan, math.nan)
    if has_pair:
        x, y = (_column(points, name) for name in PEARSON_COLUMNS)
        r, rho, interval = pearson(x, y), spearman(x, y), bootstrap_pearson_interval(x, y)
    barriers = barrier_heights(points)
    return {
        "points": len(points),
        "pearson_columns": list(PEARSON_COLUMNS),
        "pearson": _json_float(r),
        "pearson_ci95": None if math.isnan(interval[0]) else [interval[0], interval[1]],
        "spearman": _json_float(rho),
        "barriers": {name: _json_float(value) for name, value in barriers.items()},
        "barrier_rule": BARRIER_RULE,
        "settings": dict(settings),
    }
