"""scripts/one_model_tables.py: the digits study's tables, written from a study file."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import one_model_tables as tables  # noqa: E402


def run(chosen_t: float, asr_from: float) -> dict:
    """A repair of model 'm': backdoor-free from t = `asr_from` on, 0.5 t away from it (relative weight distance)."""
    rows = [
        {
            "t": t,
            "clean_acc": 0.95 - 0.02 * t,
            "asr": 0.02 if t >= asr_from else 0.9,
            "holdout_acc": 0.9,
            "relative_weight_distance": 0.5 * t,
            "changed_predictions": 0.1 * t,
            "logit_agreement": 1 - 0.1 * t,
        }
        for t in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    return {"model": "m", "recipe": f"from{asr_from}", "seconds": 3, "chosen_t": chosen_t, "rows": rows}


def test_the_tables_count_the_points_each_repair_exported_under_the_default_rule(tmp_path):
    model = {"trigger": "3x3 white patch", "rate": 0.1, "seed": 1, "clean_acc": 0.96, "asr": 1.0, "seconds": 5}
    study = {"budget": {}, "seconds": 9, "models": {"m": model}, "runs": [run(0.5, 0.25), run(0.25, 0.5)]}

    text = tables.write_tables(study, tmp_path / "study.md")

    assert (tmp_path / "study.md").read_text() == text + "\n"
    # the default ('auto') resolves to the one-model rule; its points are the two exported ones (t = 0.5, t = 0.25)
    section = text.split("at the points the repairs exported (the default rule with one model: 'veto') (2)")[1]
    confusion = section.split("##")[0]
    # the second repair exported t = 0.25 (ASR 0.9, distance 0.125 < 0.2): warned; the first t = 0.5 (removed, 0.25)
    assert "| warned | 1 | 0 |" in confusion and "| not warned | 0 | 1 |" in confusion
