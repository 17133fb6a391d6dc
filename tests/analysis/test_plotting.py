"""The path figure: panels for the columns present, an atomically written non-empty PNG, no pyplot state."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from mcrobust.analysis.plotting import panel_names, plot_path
from mcrobust.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
T = [i / 10 for i in range(11)]


def rows(*columns: str) -> list[dict]:
    """A path table with the given columns, bump-shaped in t like a real path."""
    table = []
    for t in T:
        bump = math.sin(math.pi * t)
        values = {
            "clean_acc": 0.9 - 0.05 * bump,
            "asr": 1.0 if t in (0.0, 1.0) else 0.05,
            "injection_success": 1.0 if t in (0.0, 1.0) else 0.0,
            "robust_loss": 2 + bump,
            "robust_acc": 0.3 - 0.1 * bump,
            "ra": 0.0 if t in (0.0, 1.0) else 0.85,
            "hessian_top_eig": 3 + 2 * bump,
            "hessian_top_eig_std": 4.0,  # a skewed spread: mean - std < 0 although every eigenvalue is > 0
            "hessian_top_eig_median": 2 + bump,
            "hessian_top_eig_q25": 1 + bump,
            "hessian_top_eig_q75": 4 + 3 * bump,
        }
        table.append({"t": t, **{name: values[name] for name in columns}})
    return table


@pytest.mark.parametrize(
    ("columns", "panels", "axes"),
    [
        pytest.param(("clean_acc",), ["clean"], 1, id="clean-only"),
        pytest.param(("clean_acc", "asr"), ["clean", "attack"], 2, id="backdoor"),
        pytest.param(("clean_acc", "injection_success"), ["clean", "attack"], 2, id="injection"),
        pytest.param(("clean_acc", "robust_loss"), ["clean", "robust"], 2, id="robust-loss-only"),
        pytest.param(("robust_loss", "robust_acc"), ["robust"], 2, id="robust-twin-axis"),
        pytest.param(
            ("clean_acc", "asr", "robust_loss", "robust_acc", "hessian_top_eig", "hessian_top_eig_std"),
            ["clean", "attack", "robust", "hessian"],
            5,
            id="all-older-table",
        ),
        pytest.param(("hessian_top_eig_median",), ["hessian"], 1, id="hessian-median-only"),
    ],
)
def test_one_panel_per_kind_of_metric_present(columns, panels, axes):
    table = rows(*columns)
    assert panel_names(table) == panels
    assert len(plot_path(table).axes) == axes


def test_png_is_written_atomically_and_is_an_image(tmp_path):
    target = tmp_path / "plots" / "path.png"
    figure = plot_path(rows("clean_acc", "asr", "hessian_top_eig", "hessian_top_eig_std"), target, "repair", 0.4)
    assert target.stat().st_size > 1000
    assert matplotlib.image.imread(target).shape[:2] == (360, 3 * 432)
    assert [p.name for p in target.parent.iterdir()] == ["path.png"]  # no temporary file left
    assert figure.get_suptitle() == "repair"
    assert all(" selected t = 0.40 " in [text.get_text() for text in ax.texts] for ax in figure.axes)
    plot_path(rows("clean_acc"), target)  # overwriting works
    assert [p.name for p in target.parent.iterdir()] == ["path.png"]


HESSIAN = (
    "hessian_top_eig",
    "hessian_top_eig_std",
    "hessian_top_eig_median",
    "hessian_top_eig_q25",
    "hessian_top_eig_q75",
)


def test_percent_only_in_the_plot_and_the_eigenvalue_is_the_median_with_its_quartile_band():
    table = rows("clean_acc", *HESSIAN)
    figure = plot_path(table)
    clean, hessian = figure.axes
    assert clean.lines[0].get_ydata()[0] == pytest.approx(10.0)  # error in percent
    assert list(hessian.lines[0].get_ydata()) == pytest.approx([row["hessian_top_eig_median"] for row in table])
    (band,) = hessian.collections
    vertices = band.get_paths()[0].vertices
    assert vertices[:, 1].min() == pytest.approx(1.0) and vertices[:, 1].max() == pytest.approx(7.0)  # q25..q75
    assert vertices[:, 1].min() > 0  # mean - std would be 3 - 4 < 0 at the endpoints


def test_an_older_table_without_quartiles_plots_the_mean_without_a_band():
    table = rows("hessian_top_eig", "hessian_top_eig_std")
    (hessian,) = plot_path(table).axes
    assert list(hessian.lines[0].get_ydata()) == pytest.approx([row["hessian_top_eig"] for row in table])
    assert len(hessian.collections) == 0


def test_ra_is_drawn_beside_the_asr():
    table = rows("asr", "ra")
    (attack,) = plot_path(table).axes
    assert [line.get_label() for line in attack.lines] == ["attack success", "RA (true class)"]
    assert attack.lines[1].get_ydata()[5] == pytest.approx(85.0)


def test_missing_values_and_no_metrics_still_plot():
    table = rows("clean_acc", "robust_loss")
    table[3]["robust_loss"] = None
    assert len(plot_path(table).axes) == 2
    assert len(plot_path([{"t": 0.0}, {"t": 1.0}]).axes) == 1


def test_rows_need_t():
    with pytest.raises(ConfigError):
        plot_path([{"clean_acc": 0.5}])


def test_plotting_never_imports_pyplot(tmp_path):
    """No global figure manager or backend switch: safe in DDP workers and alongside other plotting code."""
    code = (
        "import sys; from mcrobust.analysis.plotting import plot_path; "
        f"plot_path([{{'t': 0.0, 'clean_acc': 0.9}}, {{'t': 1.0, 'clean_acc': 0.8}}], {str(tmp_path / 'a.png')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
