"""Path statistics against scipy on the same numbers, NaN conventions, barriers on hand-made tables, the summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from mcrobust.analysis.statistics import (
    barrier_height,
    barrier_heights,
    bootstrap_pearson_interval,
    pearson,
    spearman,
    summarize_path,
    wilson_interval,
)
from mcrobust.errors import ConfigError

T = [i / 10 for i in range(11)]


@pytest.fixture
def columns() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=15)
    return x, 2 * x + rng.normal(scale=0.8, size=15)


def test_pearson_and_spearman_equal_scipy(columns):
    x, y = columns
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(list(x), list(-y)) == pytest.approx(-pearson(x, y), abs=1e-12)


def test_missing_values_are_dropped_pairwise(columns):
    x, y = columns
    x_missing = [None, *x[1:]]
    y_missing = [*y[:-1], math.nan]
    assert pearson(x_missing, y_missing) == pytest.approx(stats.pearsonr(x[1:-1], y[1:-1]).statistic, abs=1e-12)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        pytest.param([1.0, 2.0], [3.0, 4.0], id="two-points"),
        pytest.param([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], id="constant-y"),
        pytest.param([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], id="constant-x"),
        pytest.param([1.0, 2.0, math.nan, None], [1.0, 2.0, 3.0, 4.0], id="two-finite-pairs"),
    ],
)
def test_degenerate_columns_give_nan_without_warnings(x, y, recwarn):
    assert math.isnan(pearson(x, y))
    assert math.isnan(spearman(x, y))
    assert all(math.isnan(v) for v in bootstrap_pearson_interval(x, y))
    assert not recwarn.list


def test_columns_of_different_length_are_an_error():
    with pytest.raises(ConfigError):
        pearson([1, 2, 3], [1, 2])


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic_per_seed(columns):
    x, y = columns
    low, high = bootstrap_pearson_interval(x, y, resamples=500)
    assert -1 <= low < pearson(x, y) < high <= 1
    assert bootstrap_pearson_interval(x, y, resamples=500) == (low, high)
    assert bootstrap_pearson_interval(x, y, resamples=500, seed=1) != (low, high)
    narrow = bootstrap_pearson_interval(x, y, confidence=0.5, resamples=500)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_rejects_impossible_settings(columns):
    with pytest.raises(ConfigError):
        bootstrap_pearson_interval(*columns, confidence=1.0)
    with pytest.raises(ConfigError):
        bootstrap_pearson_interval(*columns, resamples=0)


@pytest.mark.parametrize(
    ("ts", "values", "expected"),
    [
        pytest.param([0, 0.5, 1], [1.0, 3.0, 2.0], 1.0, id="positive"),
        pytest.param([0, 0.25, 0.5, 0.75, 1], [1.0, 2.0, 2.0, 1.5, 2.0], 0.0, id="zero"),
        pytest.param([0, 0.5, 1], [2.0, 0.5, 1.0], -1.5, id="negative"),
        pytest.param([1, 0.5, 0], [2.0, 3.5, 1.0], 1.5, id="unsorted-t"),
        pytest.param([0, 0.3, 0.6, 1], [1.0, math.nan, 1.5, 1.2], 0.3, id="nan-interior-ignored"),
    ],
)
def test_barrier_height_on_hand_made_tables(ts, values, expected):
    assert barrier_height(ts, values) == pytest.approx(expected)


def test_barrier_height_needs_an_interior_point():
    assert math.isnan(barrier_height([0, 1], [1.0, 2.0]))
    assert math.isnan(barrier_height([0, 0.5, 1], [1.0, math.nan, 2.0]))
    assert math.isnan(barrier_height([0, 0.5, 1], [math.nan, 3.0, 2.0]))


def test_barrier_heights_measures_accuracies_on_their_error():
    spreads = {"hessian_top_eig_std": 0.1, "hessian_top_eig_q25": 0.5, "hessian_top_eig_q75": 2.0}
    counts = {"n_clean": 120.0, "n_triggered": 108.0}
    table = [
        {"t": 0.0, "clean_acc": 0.90, "ra": 0.02, "robust_loss": 1.0, **spreads, **counts},
        {"t": 0.5, "clean_acc": 0.80, "ra": 0.70, "robust_loss": 1.6, **spreads, **counts},
        {"t": 1.0, "clean_acc": 0.85, "ra": 0.75, "robust_loss": 1.2, **spreads, **counts},
    ]
    barriers = barrier_heights(table)
    assert set(barriers) == {"clean_acc", "ra", "robust_loss"}  # spreads and counts are not metrics
    assert barriers["clean_acc"] == pytest.approx(0.05)  # error 0.20 inside vs 0.15 at the worse endpoint
    assert barriers["ra"] == pytest.approx(0.30 - 0.98)  # RA is an accuracy: its error 0.30 inside, 0.98 at t=0
    assert barriers["robust_loss"] == pytest.approx(0.4)
    assert barrier_heights(table, ["robust_loss"]) == {"robust_loss": pytest.approx(0.4)}


def path_table() -> list[dict]:
    bump = [math.sin(math.pi * t) for t in T]
    return [
        {"t": t, "clean_acc": 0.9 - 0.02 * b, "robust_loss": 1 + b + 0.05 * (i % 3), "hessian_top_eig": 2 + 3 * b}
        for i, (t, b) in enumerate(zip(T, bump, strict=True))
    ]


def test_summary_keys_values_and_json():
    rows = path_table()
    summary = summarize_path(rows[::-1], {"bn_data": "bonafide", "attack": "PGD"})
    assert {"points", "pearson", "pearson_ci95", "spearman", "barriers", "barrier_rule", "settings"} <= set(summary)
    assert summary["points"] == 11
    x, y = [r["robust_loss"] for r in rows], [r["hessian_top_eig"] for r in rows]
    assert summary["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert summary["pearson"] > 0.9
    low, high = summary["pearson_ci95"]
    assert low <= summary["pearson"] <= high
    assert summary["barriers"]["robust_loss"] == pytest.approx(barrier_height(T, x))
    assert summary["settings"] == {"bn_data": "bonafide", "attack": "PGD"}
    json.loads(json.dumps(summary, allow_nan=False))


def test_summary_without_the_pearson_columns_has_nulls():
    rows = [{"t": t, "clean_acc": 0.9, "asr": 1.0 if t in (0, 1) else 0.0} for t in T]
    summary = summarize_path(rows, {})
    assert summary["pearson"] is None and summary["pearson_ci95"] is None and summary["spearman"] is None
    assert summary["barriers"] == {"clean_acc": 0.0, "asr": -1.0}
    json.loads(json.dumps(summary, allow_nan=False))
    with pytest.raises(ConfigError):
        summarize_path([{"clean_acc": 0.5}], {})


def test_wilson_interval_equals_its_formula():
    # k = 93 of n = 120 (p = 0.775), z = 1.959963984540054 (97.5% normal quantile), worked by hand:
    # centre = (p + z^2/2n) / (1 + z^2/n) = 0.79101 / 1.03201 = 0.76647
    # half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2) = 1.89917 * 0.038985 = 0.07404
    k, n, z = 93, 120, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(k / n, n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.76647 - 0.07404, 0.76647 + 0.07404), abs=2e-5)


def test_wilson_interval_at_zero_stays_in_range_and_refuses_non_counts():
    low, high = wilson_interval(0.0, 50)
    z2 = 1.959963984540054**2
    assert low == pytest.approx(0.0, abs=1e-15) and high == pytest.approx(z2 / (50 + z2), rel=1e-12)
    assert wilson_interval(0.123456, 50) is None  # not k/50: a mean over draws, no binomial interval
    assert wilson_interval(0.5, 0) is None and wilson_interval(math.nan, 10) is None
    with pytest.raises(ConfigError):
        wilson_interval(0.5, 10, confidence=1.0)
