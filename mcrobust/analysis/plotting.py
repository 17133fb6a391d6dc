"""The paper-style figure of a path: metrics against t, one panel per kind of metric (Zhao et al. 2020, Fig. 2-5).

Built on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot: no global state, no display needed, safe in
DDP workers and tests. Metrics are fractions in the table and percent only here.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mcrobust.errors import ConfigError

__all__ = ["panel_names", "plot_path", "save_figure"]

_PANEL_WIDTH, _PANEL_HEIGHT = 3.6, 3.0


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    return np.asarray([math.nan if row.get(name) is None else float(row[name]) for row in rows], dtype=float)


def _has(rows: Sequence[Mapping[str, Any]], name: str) -> bool:
    return bool(np.isfinite(_column(rows, name)).any())


def _clean_panel(ax: Axes, t: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> list[Axes]:
    ax.plot(t, 100 * (1 - _column(rows, "clean_acc")), "o-", color="tab:blue", label="clean error")
    ax.set_ylabel("clean error (%)")
    return [ax]


_ATTACK_LINES = (
    ("asr", "attack success", "tab:red", "s-"),
    ("ra", "RA (true class)", "tab:olive", "o--"),
    ("injection_success", "injection", "tab:purple", "s-"),
)


def _attack_panel(ax: Axes, t: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> list[Axes]:
    """ASR and, on the same triggered images, RA (predicted as their true class); injection success."""
    for name, label, color, style in _ATTACK_LINES:
        if _has(rows, name):
            ax.plot(t, 100 * _column(rows, name), style, color=color, label=label)
    ax.set_ylabel("triggered images (%)" if _has(rows, "ra") else "attack success (%)")
    ax.set_ylim(-3, 103)
    return [ax]


def _robust_panel(ax: Axes, t: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> list[Axes]:
    used = [ax]
    if _has(rows, "robust_loss"):
        ax.plot(t, _column(rows, "robust_loss"), "^-", color="tab:orange", label="robustness loss")
        ax.set_ylabel("robustness loss")
    if _has(rows, "robust_acc"):  # second y axis: accuracy in percent beside the loss
        twin = ax.twinx() if _has(rows, "robust_loss") else ax
        twin.plot(t, 100 * _column(rows, "robust_acc"), "v--", color="tab:green", label="robust accuracy")
        twin.set_ylabel("robust accuracy (%)")
        used += [twin] if twin is not ax else []
    return used


def _hessian_panel(ax: Axes, t: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> list[Axes]:
    """Median per-sample λ_max with its inter-quartile band: the values are skewed and positive, mean ± std is not."""
    if not _has(rows, "hessian_top_eig_median"):  # a table written before the quartiles were measured
        ax.plot(t, _column(rows, "hessian_top_eig"), "d-", color="tab:brown", label="λ_max, mean over samples")
    else:
        ax.plot(t, _column(rows, "hessian_top_eig_median"), "d-", color="tab:brown", label="λ_max, median")
        if _has(rows, "hessian_top_eig_q25") and _has(rows, "hessian_top_eig_q75"):
            low, high = _column(rows, "hessian_top_eig_q25"), _column(rows, "hessian_top_eig_q75")
            ax.fill_between(t, low, high, color="tab:brown", alpha=0.2, linewidth=0, label="quartiles (25-75%)")
    ax.set_ylabel("input-Hessian λ_max")
    return [ax]


def _mark_selected(ax: Axes, selected_t: float) -> None:
    """A dotted vertical line at the selected t, labelled "selected t = ..." at the top of the panel."""
    ax.axvline(selected_t, color="gray", linestyle=":", linewidth=1)
    side = "right" if selected_t > 0.5 else "left"  # the label stays inside the panel
    label = f" selected t = {selected_t:.2f} "
    ax.text(selected_t, 0.98, label, transform=ax.get_xaxis_transform(), ha=side, va="top", fontsize="small")


# A panel draws on its axes (and maybe a twin) and returns every axes it used, for one combined legend.
_Panel = Callable[[Axes, np.ndarray, Sequence[Mapping[str, Any]]], list[Axes]]
# (panel name, columns any of which makes the panel appear, drawing function)
_PANELS: tuple[tuple[str, tuple[str, ...], _Panel], ...] = (
    ("clean", ("clean_acc",), _clean_panel),
    ("attack", ("asr", "injection_success"), _attack_panel),
    ("robust", ("robust_loss", "robust_acc"), _robust_panel),
    ("hessian", ("hessian_top_eig", "hessian_top_eig_median"), _hessian_panel),
)


def panel_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the panels :func:`plot_path` draws for these rows: clean, attack, robust, hessian (those with data)."""
    return [name for name, columns, _ in _PANELS if any(_has(rows, column) for column in columns)]


def plot_path(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str] | None = None,
    title: str = "",
    selected_t: float | None = None,
) -> Figure:
    """Plot a path table against t and return the figure (log it with TensorBoard's ``add_figure``).

    Panels, only those with data: clean error (%); ASR, RA and/or injection success (%); robustness loss with robust
    accuracy (%) on a second y axis; input-Hessian top eigenvalue, the median over samples with its inter-quartile
    band (the mean for tables without quartiles). A dotted line labelled ``t = ...`` marks ``selected_t``. With
    ``path`` the PNG is written atomically.

    Args:
        rows: path table, one row per t with fractions in [0,1] (``path_metrics.csv`` columns).
        path: where to save a PNG; None saves nothing.
        title: figure title (the run, e.g. 'repair_digits_tiny/version_3').
        selected_t: the t chosen for export, marked on every panel; None marks nothing.
    """
    if any("t" not in row for row in rows):
        raise ConfigError("every row of a path table needs a 't'")
    rows = sorted(rows, key=lambda row: float(row["t"]))
    t = _column(rows, "t")
    panels = [(name, draw) for name, columns, draw in _PANELS if any(_has(rows, column) for column in columns)]
    figure = Figure(figsize=(_PANEL_WIDTH * max(1, len(panels)), _PANEL_HEIGHT), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no metrics to plot", ha="center", va="center", transform=axes[0].transAxes)
    for ax, (_, draw) in zip(axes, panels, strict=False):
        used = draw(ax, t, rows)
        ax.set_xlabel("t")
        ax.grid(True, alpha=0.3)
        if selected_t is not None:
            _mark_selected(ax, selected_t)
        handles = [handle for a in used for handle in a.get_legend_handles_labels()[0]]
        if len(handles) > 1:
            ax.legend(handles=handles, fontsize="small")
    if title:
        figure.suptitle(title)
    if path is not None:
        save_figure(figure, path)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Write a figure as PNG atomically: a temporary file in the same folder, then ``os.replace``.

    A reader (TensorBoard, a user refreshing the file) never sees a half-written image.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".plot-", suffix=".png", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png", dpi=120)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
