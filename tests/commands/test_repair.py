"""`mcrobust repair` hands every option to `mcrobust.repair` under the same name (the one implementation)."""

from __future__ import annotations

import pytest

from mcrobust.commands import repair as command


def test_selection_and_second_end_reach_the_repair(monkeypatch):
    seen = {}
    monkeypatch.setattr("mcrobust.api.repair", lambda model, clean, net, **options: seen.update(options) or None)
    monkeypatch.setattr("mcrobust.pipeline.inputs.build_net", lambda name, args: name)
    args = command.parser().parse_args(
        [
            "--model",
            "m.pt",
            "--net",
            "tiny",
            "--clean",
            "c/",
            "--out",
            "o/",
            "--selection",
            "far",
            "--second-end",
            "fst",
        ]
    )
    command._run(args)
    assert seen["selection"] == "far" and seen["second_end"] == "fst" and seen["out"] == "o/"
    assert not {"unlearn_suspect", "unlearn_eps", "unlearn_eps_final", "path_distill"} & set(seen)  # chain defaults
    seen.clear()
    command._run(
        command.parser().parse_args(
            ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--unlearn-suspect"]
        )
    )
    assert seen["unlearn_suspect"] is True and seen.get("second_end", "unlearn") == "unlearn"
    command._run(
        command.parser().parse_args(
            ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--no-unlearn-suspect"]
        )
    )
    assert seen["unlearn_suspect"] is False
    command._run(
        command.parser().parse_args(
            ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--unlearn-eps", "0.75"]
        )
    )
    assert seen["unlearn_eps"] == 0.75
    command._run(
        command.parser().parse_args(
            ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--unlearn-eps-final", "1.5"]
        )
    )
    assert seen["unlearn_eps_final"] == 1.5
    command._run(
        command.parser().parse_args(
            ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--unlearn-eps", "auto"]
        )
    )
    assert seen["unlearn_eps"] == "auto"
    command._run(
        command.parser().parse_args(
            ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--path-distill", "1"]
        )
    )
    assert seen["path_distill"] == 1.0
    command._run(
        command.parser().parse_args(
            ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--path-distill", "auto"]
        )
    )
    assert seen["path_distill"] == "auto"


def test_an_unknown_selection_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--selection", "near"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--selection" in err and "far" in err


def test_an_unlearning_radius_that_is_not_a_number_or_auto_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--unlearn-eps", "wide"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err.split("error:")[-1] and "--unlearn-eps" in err and "'auto'" in err


def test_a_distillation_weight_that_is_not_a_number_or_auto_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--path-distill", "lots"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err.split("error:")[-1] and "--path-distill" in err and "'auto'" in err
