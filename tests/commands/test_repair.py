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
    assert "unlearn_suspect" not in seen and "unlearn_eps" not in seen  # the chain's defaults decide
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


def test_an_unknown_selection_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--selection", "near"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--selection" in err and "far" in err
