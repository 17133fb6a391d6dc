"""scripts/cifar10_grid.py: issue 14's bar counted per candidate recipe from a cell's result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import cifar10_grid as grid  # noqa: E402

SIGNALS = {"relative_weight_distance": 0.05, "changed_predictions": 0.3, "logit_agreement": 0.9}


def repair(points: list[tuple[float, float, float]], t: float, warned: bool = True) -> dict:
    """A repair file: (clean, ASR, holdout accuracy) at t = 0, 0.25, ..., 1."""
    rows = [
        {"t": i / 4, "clean_acc": c, "asr": a, "holdout_acc": h, "n_clean": 2000, "n_triggered": 1800}
        for i, (c, a, h) in enumerate(points)
    ]
    return {"t": t, "rows": rows, "distance_from_model": SIGNALS, "warnings": ["w"] if warned else [], "seconds": 9}


B_PATH = [(0.50, 0.95, 0.50), (0.50, 0.90, 0.50), (0.50, 0.60, 0.50), (0.48, 0.30, 0.40), (0.42, 0.08, 0.30)]
"""Cell b's unlearning path: the backdoor survives until the end, which costs 8 points."""


def write_cell(folder: Path, unlearn: list[tuple[float, float, float]]) -> None:
    folder.mkdir(parents=True)
    kept = [(0.50, 0.95, 0.50)] * 5
    files = {
        "tampered": {"train_seconds": 1, "clean_acc": 0.50, "asr": 0.95},
        "repair_finetune": repair(kept, 0.5),
        "repair_superfinetune": repair(kept, 0.5),
        "fst": {"clean_acc": 0.45, "asr": 0.05, "seconds": 3},
        "repair_unlearn": repair(unlearn, 0.5),
    }
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))


def test_the_bar_is_counted_per_candidate_on_the_cells_fine_tuning_left_backdoored(tmp_path):
    # cell a: the path's middle removes the backdoor within 3 points; the far rule takes t = 0.75 (within one SE)
    write_cell(
        tmp_path / "a",
        [(0.50, 0.95, 0.50), (0.51, 0.40, 0.49), (0.49, 0.05, 0.49), (0.48, 0.02, 0.48), (0.44, 0.01, 0.40)],
    )
    write_cell(tmp_path / "b", B_PATH)
    # the scan rule on cell b's path: it cleared no point, so it exported the far point and warned
    (tmp_path / "b" / "repair_unlearn_scan.json").write_text(json.dumps(repair(B_PATH, 0.5, warned=True)))
    (tmp_path / "cache").mkdir()  # a folder without results is not a cell

    text = grid.table(tmp_path)

    assert (
        "| a | 0.500 / 0.950 | 0.440 / 0.010 | 0.490 / 0.050 (t=0.50) | 0.480 / 0.020 (t=0.75) | - | yes / - | 9 |"
        in text
    )
    b_row = "| b | 0.500 / 0.950 | 0.420 / 0.080 | 0.500 / 0.600 (t=0.50) | 0.500 / 0.600 (t=0.50) | "
    assert b_row + "0.500 / 0.600 (t=0.50) | yes / yes | 9 |" in text
    assert "2 cells finished; fine-tuning left ASR > 0.5 on 2." in text
    assert bar("unlearning alone (t = 1)", 2, 0) in text  # both ends clean, both at a cost of 6-8 points
    assert bar("the path to the unlearned end, middle rule", 1, 1) in text
    assert bar("the path to the unlearned end, far rule", 1, 1) in text
    assert bar("FST alone", 2, 0) in text
    assert bar("the path to the super-fine-tuned end (the previous default), middle rule", 0, 0) in text
    assert "- the path to the unlearned end, scan rule: ASR <= 0.10 on 0 of 1, and with clean" in text


def bar(name: str, removed: int, met: int) -> str:
    return f"- {name}: ASR <= 0.10 on {removed} of 2, and with clean accuracy within 3 points of the model on {met}."


def test_every_recipe_maps_to_settings_repair_accepts():
    from mcrobust.pipeline.settings import ChainSettings

    for settings in grid.RECIPE_SETTINGS.values():
        ChainSettings(**settings)  # __post_init__ refuses an unknown second end or a bad combination
    assert grid.RECIPE_SETTINGS["unlearn_suspect_scan"] == {
        "second_end": "unlearn",
        "unlearn_suspect": True,
        "selection": "scan",
        "unlearn_eps": 3.0,
    }
    assert grid.RECIPE_SETTINGS["unlearn"]["unlearn_suspect"] is False  # as it ran, whatever the default
    # every unlearning recipe names its radius: the folders of the first radius stay the same recipe
    unlearning = [settings for settings in grid.RECIPE_SETTINGS.values() if settings["second_end"] == "unlearn"]
    assert all("unlearn_eps" in settings for settings in unlearning)
    assert grid.FIRST_RADIUS["unlearn_eps"] == grid.RADIUS_LADDER[0]  # where 'auto' starts
    assert ChainSettings().unlearn_eps == "auto" == grid.RECIPE_SETTINGS["unlearn_suspect_veto_auto"]["unlearn_eps"]
    assert grid.RECIPE_SETTINGS["unlearn_suspect_veto_r15"]["unlearn_eps"] == 1.5
    schedule = grid.RECIPE_SETTINGS["unlearn_suspect_veto_s3to15"]
    assert (schedule["unlearn_eps"], schedule["unlearn_eps_final"], schedule["selection"]) == (3.0, 1.5, "veto")
    assert set(grid.RECIPES) < set(grid.RECIPE_SETTINGS)


def test_a_cell_without_the_super_fine_tuning_repair_is_counted_for_the_recipes_it_ran(tmp_path):
    write_cell(tmp_path / "a", B_PATH)
    (tmp_path / "a" / "repair_superfinetune.json").unlink()
    (tmp_path / "a" / "repair_unlearn_suspect.json").write_text(json.dumps(repair(B_PATH, 0.75)))
    scanned = repair(
        [(0.50, 0.95, 0.50), (0.49, 0.06, 0.49), (0.47, 0.03, 0.47), (0.45, 0.02, 0.45), (0.42, 0.0, 0.4)], 0.25
    )
    (tmp_path / "a" / "repair_unlearn_suspect_scan.json").write_text(json.dumps(scanned))

    text = grid.table(tmp_path)

    assert (
        "| a | 0.500 / 0.950 | 0.500 / 0.950 | 0.500 / 0.950 (t=0.50) | - | 0.450 / 0.050 | - | - | - | - | 1 |" in text
    )
    assert "**0.490 / 0.060 (t=0.25)**" in text  # the default's column, bold
    assert "- the path to the end unlearned with the suspect class, scan rule: ASR <= 0.10 on 1 of 1, and" in text
    assert "super-fine-tuned" not in text  # no candidate line for a recipe no cell ran


def test_replicas_are_cells_of_their_own_and_only_backdoored_cells_go_on():
    assert grid.cell_name("wrn16_1", "patch", 0.1) == "wrn16_1-patch-r10"
    assert grid.cell_name("wrn16_1", "patch", 0.2, replica=3) == "wrn16_1-patch-r20-rep3"


def test_the_backdoor_gate_reads_the_papers_fine_tuned_end(tmp_path):
    assert not grid.finetuning_kept_backdoor(tmp_path)  # not run yet: nothing beyond fine-tuning runs
    write_cell(tmp_path / "kept", B_PATH)
    assert grid.finetuning_kept_backdoor(tmp_path / "kept")
    removed = repair([(0.50, 0.95, 0.50)] * 4 + [(0.49, 0.40, 0.49)], 0.5)
    (tmp_path / "kept" / "repair_finetune.json").write_text(json.dumps(removed))
    assert not grid.finetuning_kept_backdoor(tmp_path / "kept")


SUSPECT_PATH = [(0.50, 0.95, 0.50), (0.50, 0.60, 0.50), (0.49, 0.05, 0.49), (0.48, 0.02, 0.48), (0.44, 0.01, 0.40)]
"""A suspect-class path: backdoored at t = 0.25 (ASR 0.60), clean from t = 0.5 on."""
OVERTAKEN = {  # the scan per t: class 0 is the suspect; at t = 0.25 class 1 leads, but class 0 still stands far out
    "0.0": [1.0, 0.2, 0.2, 0.2, 0.2],
    "0.25": [0.5, 0.7, 0.2, 0.2, 0.2],
    "0.5": [0.2, 0.3, 0.2, 0.2, 0.2],
    "0.75": [0.1, 0.2, 0.2, 0.2, 0.2],
    "1.0": [0.1, 0.1, 0.1, 0.1, 0.1],
}


def test_every_rule_is_replayed_from_one_scan_per_point():
    rows = repair(SUSPECT_PATH, 0.5)["rows"]
    choices = grid.replayed_choices(rows, OVERTAKEN)
    assert choices["middle"] == (0.5, False)
    assert choices["far"] == (0.75, False)  # t = 0.75 is within one SE (0.032) of the best holdout, 0.50
    assert choices["scan (must lead)"] == (0.25, False)  # the old rule cleared the overtaken suspect: ASR 0.60
    assert choices["scan"] == (0.5, False)  # the overtaken suspect still counts
    assert choices["veto"] == (0.5, False)
    still = {t: [1.0, 0.2, 0.2, 0.2, 0.2] for t in OVERTAKEN}  # the suspect stands out everywhere
    assert grid.replayed_choices(rows, still)["scan"] == (0.75, True)  # far point, warned
    assert grid.replayed_choices(rows, still)["veto"] == (0.75, True)


def test_the_study_table_counts_the_bar_per_rule(tmp_path):
    write_cell(tmp_path / "a-rep3", B_PATH)
    (tmp_path / "a-rep3" / "repair_unlearn_suspect_scan.json").write_text(json.dumps(repair(SUSPECT_PATH, 0.5)))
    (tmp_path / "a-rep3" / "scan_study.json").write_text(json.dumps({"reach": OVERTAKEN, "seconds": 5}))

    text = grid.study_table(tmp_path)

    assert "| a-rep3 | 0.500 / 0.950 | 0.500 / 0.950 | 0.450 / 0.050 | 0.440 / 0.010 |" in text
    assert "**0.490 / 0.050 (t=0.50)**" in text and "0.500 / 0.600 (t=0.25)" in text  # veto, bold; the old scan
    assert "| t=0.50 scan (0.490 / 0.050) | 9 |" in text  # the scan repair's own pick agrees with the replayed scan
    assert "- scan (must lead): 0 of 1, 0 of 1" in text and "- scan: 1 of 1, 1 of 1" in text
    assert "- far: 1 of 1, 1 of 1" in text  # t = 0.75: 0.480 / 0.020, 2 points under the model


def test_the_study_table_shows_the_defaults_own_pick_where_only_the_default_ran(tmp_path):
    write_cell(tmp_path / "a-conv", B_PATH)
    (tmp_path / "a-conv" / "repair_unlearn_suspect_veto.json").write_text(json.dumps(repair(SUSPECT_PATH, 0.5)))
    (tmp_path / "a-conv" / "scan_study.json").write_text(json.dumps({"reach": OVERTAKEN, "seconds": 5}))

    assert "| t=0.50 veto (0.490 / 0.050) | 9 |" in grid.study_table(tmp_path)


HALF_RADIUS_PATH = [(0.50, 0.95, 0.50), (0.50, 0.02, 0.50), (0.50, 0.03, 0.50), (0.49, 0.03, 0.49), (0.47, 0.04, 0.47)]
"""The same cell's path at unlearning radius 1.5: the end costs 3 points, not 6, and the middle point 0."""


def test_the_radius_table_compares_the_veto_at_every_radius_on_the_same_cells(tmp_path):
    write_cell(tmp_path / "a-rep3", B_PATH)
    (tmp_path / "a-rep3" / "repair_unlearn_suspect_scan.json").write_text(json.dumps(repair(SUSPECT_PATH, 0.25)))
    (tmp_path / "a-rep3" / "scan_study.json").write_text(json.dumps({"reach": OVERTAKEN, "seconds": 5}))
    write_cell(tmp_path / "b-conv", B_PATH)  # radius 3 ran as the veto itself: its own pick is shown
    (tmp_path / "b-conv" / "repair_unlearn_suspect_veto.json").write_text(json.dumps(repair(B_PATH, 0.5)))
    for cell in ("a-rep3", "b-conv"):
        half = repair(HALF_RADIUS_PATH, 0.5)
        (tmp_path / cell / "repair_unlearn_suspect_veto_r15.json").write_text(json.dumps(half))
    (tmp_path / "b-conv" / "repair_unlearn_suspect_veto_r2.json").write_text(json.dumps(repair(SUSPECT_PATH, 0.25)))
    (tmp_path / "b-conv" / "repair_unlearn_suspect_veto_s3to15.json").write_text(json.dumps(repair(B_PATH, 0.25)))
    write_cell(tmp_path / "c-not-run", B_PATH)  # no smaller radius ran: not a row
    write_cell(tmp_path / "d-auto-only", B_PATH)  # only 'auto' ran: no radius-3 repair to show
    (tmp_path / "d-auto-only" / "repair_unlearn_suspect_veto_auto.json").write_text(json.dumps(repair(B_PATH, 0.5)))
    write_cell(tmp_path / "e-auto-at-3", B_PATH)  # 'auto' kept radius 3 here: it is radius 3's repair as well
    (tmp_path / "e-auto-at-3" / "repair_unlearn_suspect_veto_auto.json").write_text(json.dumps(repair(B_PATH, 0.25)))
    record = tmp_path / "e-auto-at-3" / "unlearn_suspect_auto" / "steps" / "radius.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"radius": 3.0, "median_reach": {"3": 0.0}, "limit": 0.6}))

    text = grid.radius_table(tmp_path)

    # a: the veto at radius 3 replayed from the scan study (t = 0.5, not the scan repair's own t = 0.25); no radius 2
    assert "| a-rep3 | 0.500 / 0.950 | 0.500 / 0.950 | 0.440 / 0.010 | 0.490 / 0.050 (t=0.50) |" in text
    assert "| 0.470 / 0.040 | 0.500 / 0.030 (t=0.50) | - | - |" in text
    assert "| b-conv | 0.500 / 0.950 | 0.500 / 0.950 | 0.420 / 0.080 | 0.500 / 0.600 (t=0.50) |" in text
    assert "| 0.440 / 0.010 | 0.500 / 0.600 (t=0.25) |" in text  # radius 2 on b: its own pick, backdoored
    assert "c-not-run" not in text
    assert "- radius 1.5: 2 of 2, 2 of 2" in text
    assert "- radius 2: 0 of 1, 0 of 1" in text
    assert "| radius 3 to 1.5: end alone | radius 3 to 1.5: veto |" in text  # the schedule, named by its two radii
    assert "- radius 3 to 1.5: 0 of 1, 0 of 1" in text
    assert "| d-auto-only | 0.500 / 0.950 | 0.500 / 0.950 | - | - |" in text
    assert "| e-auto-at-3 | 0.500 / 0.950 | 0.500 / 0.950 | 0.420 / 0.080 | 0.500 / 0.900 (t=0.25) |" in text
    assert "- radius 3: 1 of 3, 1 of 3" in text and "- radius auto: 1 of 3, 1 of 3" in text


def test_a_distilled_path_starts_from_the_default_repairs_unlearned_end(tmp_path):
    cell = tmp_path / "a-conv"
    write_cell(cell, B_PATH)
    (cell / "auto_radius.json").write_text(json.dumps({"radius": 2.0, "median_reach": {"3": 0.7}, "seconds": 9}))
    (cell / "repair_unlearn_suspect_veto_r2.json").write_text(json.dumps(repair(SUSPECT_PATH, 0.5)))
    steps = cell / "unlearn_suspect_r2" / "steps"  # radius 2 stood in for 'auto' on this model
    steps.mkdir(parents=True)
    for name in ("model", "finetuned"):
        (steps / f"{name}.safetensors").write_bytes(name.encode())
    (steps / "chain_settings.json").write_text(json.dumps({"ends": "one", "unlearn_eps": 2.0, "epochs": 4}))

    grid.seed_trained_end(cell, cell / "unlearn_suspect_veto_auto_kd4", {"path_distill": 4.0})

    seeded = cell / "unlearn_suspect_veto_auto_kd4" / "steps"
    assert (seeded / "finetuned.safetensors").read_bytes() == b"finetuned"  # the end is reused, not retrained
    assert not (seeded / "path").exists()
    recorded = json.loads((seeded / "chain_settings.json").read_text())
    assert recorded == {"ends": "one", "unlearn_eps": "auto", "epochs": 4, "path_distill": 4.0}
    assert json.loads((seeded / "radius.json").read_text()) == {"radius": 2.0, "median_reach": {"3": 0.7}}

    (cell / "repair_unlearn_suspect_veto_auto_kd4.json").write_text(json.dumps(repair(HALF_RADIUS_PATH, 0.25)))
    text = grid.distill_table(tmp_path)
    assert "| a-conv | 0.500 / 0.950 | 0.500 / 0.950 | paper's objective | 0.500 / 0.600 |" in text
    assert "| distilled, weight 4 | 0.500 / 0.020 | 0.500 / 0.030 | 0.490 / 0.030 | 0.470 / 0.040 |" in text
    assert "- paper's objective: 1 of 1, 1 of 1" in text and "- distilled, weight 4: 1 of 1, 1 of 1" in text


def test_a_distilled_path_needs_the_default_repair_first(tmp_path):
    write_cell(tmp_path / "a", B_PATH)
    with pytest.raises(SystemExit, match="run --recipes unlearn_suspect_veto_auto first"):
        grid.seed_trained_end(tmp_path / "a", tmp_path / "a" / "unlearn_suspect_veto_auto_kd4", {"path_distill": 4.0})
    assert not (tmp_path / "a" / "unlearn_suspect_veto_auto_kd4").exists()


def test_the_scan_study_rebuilds_the_paper_objectives_path():
    # the study restores a path trained before path distillation existed: 'auto' must resolve (one model: 0)
    settings = grid.study_settings({"epochs": 4, "epoch_samples": 2500, "seed": 0})
    assert settings.path_distill == 0.0 and settings.unlearn_eps == 3.0 and settings.unlearn_suspect is True
