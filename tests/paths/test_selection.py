"""select_t: interior points only, the tolerance band, ties, explicit t, errors; select_scanned: scan and veto."""

from __future__ import annotations

import math

import pytest

from mcrobust.errors import ConfigError
from mcrobust.paths.selection import SelectionResult, select_scanned, select_t

T = [i / 10 for i in range(11)]


def table(values: list[float | None], column: str = "holdout_acc") -> list[dict]:
    return [{"t": t, column: v} for t, v in zip(T, values, strict=True)]


def test_flat_interior_picks_the_midpoint():
    result = select_t(table([0.95, 0.90, 0.91, 0.91, 0.92, 0.92, 0.92, 0.91, 0.90, 0.90, 0.95]))
    assert isinstance(result, SelectionResult)
    assert result.t == 0.5
    assert result.candidates == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert "0 < t < 1" in result.rule and "holdout_acc" in result.rule


def test_bad_midpoint_and_a_tie_at_equal_distance_goes_to_the_smaller_t():
    values = [0.95, 0.80, 0.85, 0.88, 0.90, 0.70, 0.90, 0.88, 0.85, 0.80, 0.95]
    result = select_t(table(values))
    assert result.t == 0.4  # 0.4 and 0.6 are equally good and equally far from 0.5
    assert result.candidates == (0.3, 0.4, 0.6, 0.7)


def test_endpoints_are_never_chosen_even_when_best():
    result = select_t(table([0.99, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.60, 0.99]))
    assert result.t == 0.9  # the only interior point within 0.02 of the best interior value
    assert 0.0 not in result.candidates and 1.0 not in result.candidates


def test_tolerance_is_inclusive_and_widens_the_band():
    values = [0.9, 0.90, 0.90, 0.90, 0.90, 0.88, 0.90, 0.90, 0.90, 0.90, 0.9]
    assert select_t(table(values), tolerance=0.02).t == 0.5  # exactly 0.02 below the best still qualifies
    assert select_t(table(values), tolerance=0.01).t == 0.4
    assert select_t(table(values), tolerance=0.01, target=0.2).t == 0.2


def test_other_column_and_missing_values():
    rows = table([0.9, None, 0.8, 0.85, math.nan, 0.6, 0.86, 0.7, 0.7, 0.7, 0.9], column="bonafide_acc")
    result = select_t(rows, column="bonafide_acc")
    assert result.t == 0.6
    assert result.candidates == (0.3, 0.6)


def test_explicit_t_is_returned_as_is():
    result = select_t([], explicit=0.4)
    assert (result.t, result.candidates) == (0.4, (0.4,))
    assert "explicit" in result.rule
    assert select_t(table([0.9] * 11), explicit=1.0).t == 1.0


@pytest.mark.parametrize(
    ("rows", "kwargs"),
    [
        pytest.param([{"t": 0.0, "holdout_acc": 0.9}, {"t": 1.0, "holdout_acc": 0.9}], {}, id="no-interior-point"),
        pytest.param(table([0.9] * 11, column="clean_acc"), {}, id="missing-column"),
        pytest.param(table([0.9] + [None] * 9 + [0.9]), {}, id="no-interior-value"),
        pytest.param([{"holdout_acc": 0.9}], {}, id="no-t"),
        pytest.param(table([0.9] * 11), {"tolerance": -0.1}, id="negative-tolerance"),
        pytest.param(table([0.9] * 11), {"target": 1.5}, id="target-outside"),
        pytest.param([], {"explicit": 1.2}, id="explicit-above-1"),
        pytest.param([], {"explicit": math.nan}, id="explicit-nan"),
    ],
)
def test_bad_input_raises_config_error(rows, kwargs):
    with pytest.raises(ConfigError):
        select_t(rows, **kwargs)


def test_automatic_tolerance_is_one_standard_error_and_at_least_one_image():
    from mcrobust.paths.selection import standard_error_tolerance

    assert standard_error_tolerance(1.0, 30) == pytest.approx(1 / 30)  # no spread: one image
    assert standard_error_tolerance(0.9, 100) == pytest.approx(0.03)  # sqrt(0.09 / 100)
    rows = [{"t": t, "holdout_acc": acc} for t, acc in [(0, 0.93), (0.3, 0.93), (0.5, 0.967), (0.7, 1.0), (1, 0.93)]]
    assert select_t(rows, tolerance=0.02).t == 0.7  # one image of 30 decides against the middle
    assert select_t(rows, tolerance=None, count=30).t == 0.5  # within one image of the best: the middle
    with pytest.raises(ConfigError, match="number of held-out images"):
        select_t(rows, tolerance=None)


def scanned_rows(holdout: list[float]) -> list[dict]:
    return [{"t": i / (len(holdout) - 1), "holdout_acc": h} for i, h in enumerate(holdout)]


def test_the_scan_rule_takes_the_accepted_point_nearest_the_model_that_it_clears_and_scans_no_further():
    rows = scanned_rows([0.50, 0.50, 0.49, 0.48, 0.40])  # tolerance 0.02: t = 0.25, 0.5, 0.75 are accepted
    calls = []
    result = select_scanned(rows, lambda t: calls.append(t) or t >= 0.5, tolerance=0.02)
    assert result is not None and result.t == 0.5 and calls == [0.25, 0.5]
    assert "within 0.02 of the best" in result.rule and result.candidates == (0.25, 0.5)


def test_the_scan_rule_widens_the_tolerance_once_before_giving_up():
    rows = scanned_rows([0.50, 0.50, 0.47, 0.45, 0.40])  # t = 0.5 is 0.03 below: outside 0.02, inside 0.04
    calls = []
    result = select_scanned(rows, lambda t: calls.append(t) or t == 0.5, tolerance=0.02)
    assert result is not None and result.t == 0.5 and calls == [0.25, 0.5]
    assert "within 0.04 of the best" in result.rule
    calls.clear()
    assert select_scanned(rows, lambda t: calls.append(t) or False, tolerance=0.02) is None
    assert calls == [0.25, 0.5]  # t = 0.75 is 0.05 below: never scanned, never exported
    with pytest.raises(ConfigError, match="widen >= 1"):
        select_scanned(rows, lambda t: True, tolerance=0.02, widen=0.5)


def test_with_a_start_the_scan_only_vetoes_and_never_moves_toward_the_model():
    rows = scanned_rows([0.50, 0.50, 0.49, 0.48, 0.40])  # tolerance 0.02: t = 0.25, 0.5, 0.75 are accepted
    calls = []
    result = select_scanned(rows, lambda t: calls.append(t) or True, tolerance=0.02, start=0.5)
    assert result is not None and result.t == 0.5 and calls == [0.5]  # t = 0.25 is cleared too, but never tried
    assert "closest to the model, from t = 0.5 on," in result.rule
    calls.clear()
    result = select_scanned(rows, lambda t: calls.append(t) or t > 0.5, tolerance=0.02, start=0.5)
    assert result is not None and result.t == 0.75 and calls == [0.5, 0.75]  # vetoed once: one step away
    calls.clear()
    assert select_scanned(rows, lambda t: calls.append(t) or False, tolerance=0.02, start=0.5) is None
    assert calls == [0.5, 0.75]
