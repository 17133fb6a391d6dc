"""`mcrobust repair` hands every option to `mcrobust.repair` under the same name (the one implementation)."""

from __future__ import annotations

import pytest

from mcrobust.commands import repair as command

REQUIRED = ["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/"]


@pytest.fixture
def handed_over(monkeypatch):
    """Run `mcrobust repair` with the required options and these; return what reached `mcrobust.repair`."""
    monkeypatch.setattr("mcrobust.pipeline.inputs.build_net", lambda name, args: name)

    def run(*extra: str) -> dict:
        seen: dict = {}
        monkeypatch.setattr("mcrobust.api.repair", lambda model, clean, net, **options: seen.update(options))
        command._run(command.parser().parse_args([*REQUIRED, *extra]))
        return seen

    return run


def test_selection_and_second_end_reach_the_repair(handed_over):
    seen = handed_over("--selection", "far", "--second-end", "fst")
    assert seen["selection"] == "far" and seen["second_end"] == "fst" and seen["out"] == "o/"
    assert not {"unlearn_suspect", "unlearn_eps", "unlearn_eps_final", "path_distill"} & set(seen)  # chain defaults
    seen = handed_over("--unlearn-suspect")
    assert seen["unlearn_suspect"] is True and seen.get("second_end", "unlearn") == "unlearn"
    assert handed_over("--no-unlearn-suspect")["unlearn_suspect"] is False


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--unlearn-eps", "0.75", 0.75),
        ("--unlearn-eps", "auto", "auto"),
        ("--unlearn-eps-final", "1.5", 1.5),
        ("--path-distill", "1", 1.0),
        ("--path-distill", "auto", "auto"),
    ],
)
def test_numbers_and_auto_reach_the_repair_under_the_settings_name(handed_over, option, value, expected):
    assert handed_over(option, value)[option.removeprefix("--").replace("-", "_")] == expected


def test_an_unknown_selection_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--model", "m.pt", "--net", "tiny", "--clean", "c/", "--out", "o/", "--selection", "near"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--selection" in err and "far" in err


@pytest.mark.parametrize(("option", "value"), [("--unlearn-eps", "wide"), ("--path-distill", "lots")])
def test_a_value_that_is_not_a_number_or_auto_is_one_line(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        command.main([*REQUIRED, option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err.split("error:")[-1] and option in err and "'auto'" in err
