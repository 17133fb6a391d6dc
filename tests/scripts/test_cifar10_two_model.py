"""scripts/cifar10_two_model.py: the verdict of the path against fine-tuning, and the table read from result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import cifar10_two_model as two  # noqa: E402


def result(clean: float, asr: float, ra: float = 0.1) -> dict:
    return {"clean_acc": clean, "asr": asr, "ra": ra, "n": 2000, "n_triggered": 1800}


def verdict(path: dict, a: dict, b: dict) -> str:
    return two.beats_fine_tuning("cell", 50, path, {"finetune_a": a, "finetune_b": b}).rsplit(": ", 1)[1]


@pytest.mark.parametrize(
    ("path", "a", "b", "expected"),
    [
        (result(0.80, 0.05), result(0.70, 0.06), result(0.75, 0.90), "wins"),  # cleaner at matched ASR
        (result(0.80, 0.05), result(0.85, 0.08), result(0.60, 0.05), "loses"),  # a fine-tuned end is cleaner
        (result(0.80, 0.90), result(0.40, 0.10), result(0.30, 0.20), "trade-off"),  # cleaner, but keeps the backdoor
        (result(0.50, 0.05), result(0.55, 0.90), result(0.52, 0.95), "trade-off"),  # removes it, at a clean cost
        (result(0.45, 0.30), result(0.451, 0.915), result(0.49, 0.92), "wins"),  # as clean as one, far less ASR
        (result(0.80, 0.05), result(0.805, 0.07), result(0.795, 0.06), "trade-off"),  # matched within the margins
        (result(0.52, 1.0), result(0.51, 1.0), result(0.49, 1.0), "wins, but keeps the backdoor"),
    ],
)
def test_the_path_wins_when_it_dominates_a_fine_tuned_end_and_none_dominates_it(path, a, b, expected):
    assert verdict(path, a, b) == expected


def test_a_diverged_fine_tuning_is_left_out_of_the_comparison():
    diverged = {"failed": "training diverged at step 8: the loss is nan"}
    assert verdict(result(0.8, 0.05), diverged, result(0.7, 0.05)) == "wins"
    assert two.measured(diverged) == "diverged"


def test_measured_gives_95_percent_wilson_intervals():
    text = two.measured(result(0.5, 0.1, 0.2))
    clean, asr, ra = text.split(" / ")
    assert clean == "0.500 [0.48, 0.52]"  # 1.96 * sqrt(0.25 / 2000) = 0.022
    assert asr.startswith("0.100 [0.09, 0.11]") and ra.startswith("0.200 [0.18, 0.22]")


def test_the_table_reads_every_finished_size_and_budget_at_the_most_points(tmp_path):
    cell = tmp_path / "vgg_small_bn-patch-r10"
    for name in ("tampered.json", "tampered_1.json"):
        (cell / name).parent.mkdir(parents=True, exist_ok=True)
        (cell / name).write_text(json.dumps(result(0.8, 0.95)))
    rows = [{"t": t, "n_clean": 2000, **result(0.78, 0.04)} for t in (0.0, 0.5, 1.0)]
    for study, size in (("two_model", 500), ("two_model_e16", 50)):
        step = cell / study / f"N{size}"
        step.mkdir(parents=True)
        (step / "path.json").write_text(json.dumps({"t": 0.5, "rows": rows, "seconds": 12.0}))
        for name in two.BASELINES:
            (step / f"{name}.json").write_text(json.dumps(result(0.7, 0.9)))
    (cell / "two_model" / "N2500").mkdir()  # unfinished: no line
    finer = [{"t": t / 8, "n_clean": 2000, **result(0.78, 0.04)} for t in range(9)]
    (cell / "two_model_e16" / "N50" / "path_p9.json").write_text(json.dumps({"t": 0.375, "rows": finer, "seconds": 3}))

    table = two.two_model_table(tmp_path)

    lines = [line for line in table.splitlines() if line.startswith("| vgg")]
    assert [line.split(" | ")[1:3] for line in lines] == [["4", "500"], ["16", "50"]]
    assert "(t=0.5 of 3)" in lines[0] and "(t=0.375 of 9)" in lines[1]  # the re-evaluation at more points wins
    assert table.count(": wins\n") == 2
    assert "Cells per outcome:\n- 4 epochs, N=500: wins 1\n- 16 epochs, N=50: wins 1\n" in table
    assert table.endswith("- 16 epochs, N=50: wins, but every end keeps the backdoor 1")


def rows_of(*points: tuple[float, float, float]) -> list[dict]:
    return [{"t": t, **result(clean, asr)} for t, clean, asr in points]


CURVE = rows_of((0.0, 0.80, 0.95), (0.25, 0.78, 0.60), (0.5, 0.74, 0.08), (0.75, 0.77, 0.50), (1.0, 0.81, 0.96))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (result(0.70, 0.06), result(0.72, 0.10), "wins"),  # t=0.5 is cleaner at both ends' ASR
        (result(0.70, 0.06), result(0.79, 0.55), "loses"),  # at ASR 0.55 the best interior point is 0.77
        (result(0.735, 0.04), result(0.60, 0.90), "matched"),  # 0.74 against 0.735: within the margin
        (result(0.76, 0.01), result(0.60, 0.90), "loses"),  # ASR 0.01 out of reach, and cleaner than t=0.5
        (result(0.70, 0.01), result(0.60, 0.90), "trade-off"),  # out of reach, at 4 points under t=0.5's 0.74
        (result(0.70, 0.90), result(0.60, 0.95), "wins, but every end keeps the backdoor"),
    ],
)
def test_the_curve_verdict_reads_the_cleanest_interior_point_at_each_ends_asr(a, b, expected):
    assert two.curve_verdict(CURVE, [a, b]) == expected


def test_the_endpoints_never_count_as_the_path_on_the_curve():
    # t = 0 and 1 are the tampered models: cleaner at the end's ASR, but not the path's repair
    assert two.matched_point(CURVE, result(0.79, 0.97))["t"] == 0.25
    tuned = {"finetune_a": result(0.7, 0.06), "finetune_b": result(0.72, 0.1)}
    assert two.curve_against_fine_tuning("cell", 50, CURVE, tuned) == (
        "- cell N=50: end 0.700 / 0.060 -> path 0.740 / 0.080 (t=0.5); "
        "end 0.720 / 0.100 -> path 0.740 / 0.080 (t=0.5): wins"
    )


def test_an_n_whose_fine_tuned_ends_both_diverged_has_no_verdict_instead_of_an_error():
    chosen = {"clean_acc": 0.5, "asr": 0.05}
    assert two.verdict(chosen, []) == two.curve_verdict(CURVE, []) == two.NO_END


def test_a_model_trained_on_another_number_of_images_is_refused_not_reused(tmp_path):
    folder = tmp_path / "vgg_small_bn-patch-r10"
    folder.mkdir()
    (folder / "tampered.json").write_text(json.dumps({"train_images": 240_000, **result(0.7, 0.9)}))
    budget = two.grid.Budget()  # 48,000 images: the stored model is not this cell's model at this budget
    with pytest.raises(SystemExit, match="--train-images: .*240,000 images, not 48,000.*its own --out"):
        two.tampered_model("vgg_small_bn", "patch", 0.1, None, None, folder, budget, 0, evaluate=None)


def test_the_table_says_how_many_images_trained_the_models(tmp_path):
    cell = tmp_path / "wrn16_1-patch-r10"
    for name in ("tampered.json", "tampered_1.json"):
        (cell / name).parent.mkdir(parents=True, exist_ok=True)
        (cell / name).write_text(json.dumps({"train_images": 240_000, **result(0.8, 0.95)}))
    step = cell / "two_model_e16" / "N500"
    step.mkdir(parents=True)
    rows = [{"t": t, "n_clean": 2000, **result(0.78, 0.04)} for t in (0.0, 0.5, 1.0)]
    (step / "path.json").write_text(json.dumps({"t": 0.5, "rows": rows, "seconds": 12.0}))
    for name in two.BASELINES:
        (step / f"{name}.json").write_text(json.dumps(result(0.7, 0.9)))

    line = next(line for line in two.two_model_table(tmp_path).splitlines() if line.startswith("| wrn"))

    assert line.endswith("| 12 | 240,000 |")


def test_a_step_run_with_fewer_baselines_says_not_run_and_compares_with_the_ends_it_has(tmp_path):
    cell = tmp_path / "wrn16_1-patch-r10"
    for name in ("tampered.json", "tampered_1.json"):
        (cell / name).parent.mkdir(parents=True, exist_ok=True)
        (cell / name).write_text(json.dumps(result(0.8, 0.95)))
    step = cell / "two_model_e64" / "N500"
    step.mkdir(parents=True)
    rows = [{"t": t, "n_clean": 2000, **result(clean, asr)} for t, clean, asr in ((0, 0.8, 0.95), (0.5, 0.75, 0.05))]
    (step / "path.json").write_text(json.dumps({"t": 0.5, "rows": rows, "seconds": 12.0}))
    (step / "finetune_a.json").write_text(json.dumps(result(0.7, 0.9)))

    table = two.two_model_table(tmp_path)

    line = next(line for line in table.splitlines() if line.startswith("| wrn"))
    assert line.split(" | ").count("not run") == 3  # fine-tune B, fine-prune A and scratch
    assert "- wrn16_1-patch-r10 (64 epochs) N=500: path 0.750 / 0.050, fine-tuned ends 0.700 / 0.900: wins" in table


def test_the_purification_table_holds_each_path_against_every_purification(tmp_path):
    cell = tmp_path / "wrn16_1-patch-r10"
    step = cell / "two_model_e16" / "N500"
    step.mkdir(parents=True)
    for name in ("tampered.json", "tampered_1.json"):
        (cell / name).write_text(json.dumps(result(0.8, 0.95)))
    (step / "path_p9.json").write_text(json.dumps({"t": 0.25, "rows": CURVE, "seconds": 1}))
    cleaner = rows_of((0.0, 0.80, 0.95), (0.25, 0.79, 0.50), (0.5, 0.78, 0.04), (0.75, 0.79, 0.40), (1.0, 0.81, 0.96))
    (step / "path_aug_p9.json").write_text(json.dumps({"t": 0.5, "rows": cleaner, "seconds": 1}))
    ends = {"finetune_a": (0.70, 0.90), "finetune_b": (0.71, 0.92), "superfinetune_a": (0.76, 0.06)}
    ends |= {"fst_a": (0.60, 0.01), "fineprune_a": (0.72, 0.70), "scratch": (0.40, 0.05)}
    for name, (clean, asr) in ends.items():
        (step / f"{name}.json").write_text(json.dumps(result(clean, asr)))

    table = two.purification_table(tmp_path)

    row = next(line for line in table.splitlines() if line.startswith("| wrn16_1"))
    paths = ["0.780 / 0.600 (t=0.25)", "0.780 / 0.040 (t=0.5)"] + ["not run"] * (len(two.PATHS) - 2)
    assert row.split(" | ")[3 : 4 + len(two.PATHS)] == [*paths, "0.700 / 0.900"]
    assert "| 0.400 / 0.050 |" in row  # scratch, last
    # super-fine-tuning (0.76 / 0.06) is cleaner than the plain path's backdoor-free t=0.5 (0.74 / 0.08): it loses;
    # its chosen point beats the fine-tuned ends but keeps the backdoor (ASR 0.6). The crop+flip path is cleaner at
    # every purifier's ASR, FST's 0.01 included (0.78 / 0.04 is within 0.05)
    assert "N=500, path: chosen point wins, but keeps the backdoor; curve loses (" in table
    assert "N=500, path, crop+flip: chosen point wins; curve wins (" in table
    assert "super-fine-tune A 0.760 / 0.060 -> 0.780 / 0.040 (t=0.5)" in table
    assert table.endswith("- path, 16 epochs, N=500: loses 1\n- path, crop+flip, 16 epochs, N=500: wins 1")


def test_the_points_table_lists_every_interior_t_of_every_path_with_the_chosen_one_in_bold(tmp_path):
    step = tmp_path / "vgg_small_bn-patch-r10" / "two_model_e16" / "N50"
    step.mkdir(parents=True)
    (step / "path_kd4.json").write_text(json.dumps({"t": 0.5, "rows": CURVE, "seconds": 12.4}))
    assert two.path_points_table(tmp_path).splitlines()[2] == (
        "| vgg_small_bn-patch-r10 | 16 | 50 | path, distilled x4 | 12 | 0.780 / 0.600 (0.25), **0.740 / 0.080** (0.5), "
        "0.770 / 0.500 (0.75) |"
    )


def test_no_purification_run_means_no_purification_table(tmp_path):
    (tmp_path / "vgg_small_bn-patch-r10" / "two_model" / "N50").mkdir(parents=True)
    assert two.purification_table(tmp_path) == ""
