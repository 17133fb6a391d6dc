"""The table of moved modules points at modules and names that exist, and rewrites old spellings exactly."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from mcrobust.commands.moved import MOVED, SYMBOLS, moved_hint, moved_paths, new_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_is_gone_and_its_new_home_imports(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)
    importlib.import_module(MOVED[old])


@pytest.mark.parametrize("old", sorted(SYMBOLS))
def test_every_moved_name_exists_where_the_table_says(old):
    module, name = SYMBOLS[old].rsplit(".", 1)
    assert hasattr(importlib.import_module(module), name)


def test_old_spellings_are_rewritten_and_new_ones_left_alone():
    assert new_path("mcrobust.attacks.PGD") == "mcrobust.threats.evasion.PGD"
    assert new_path("mcrobust.data.poisoning.poison") == "mcrobust.threats.backdoor.poison"
    assert new_path("mcrobust.nets.VGG") == "mcrobust.nets.VGG"
    text = "class_path: mcrobust.schedules.PaperSchedule\nclass_path: mcrobust.threats.evasion.PGD\nmcrobust.exports"
    assert moved_paths(text) == (
        "class_path: mcrobust.utils.schedules.PaperSchedule\nclass_path: mcrobust.threats.evasion.PGD\nmcrobust.exports"
    )


def test_a_message_naming_an_old_path_gets_a_one_line_hint():
    hint = moved_hint('Import path "mcrobust.attacks.PGD" could not be resolved')
    assert hint is not None and "\n" not in hint and "mcrobust.threats.evasion.PGD" in hint
    assert moved_hint("Import path my_pkg.MyNet could not be resolved") is None


def test_a_config_written_for_0_1_gets_the_new_path_in_one_line(tmp_path, capsys):
    from mcrobust.testing import fails_in_one_line

    old = tmp_path / "old.yaml"
    old.write_text("model:\n  init_args:\n    eval_attack: {class_path: mcrobust.attacks.PGD}\n")
    base = str(ROOT / "configs" / "experiments" / "endpoint_digits_tiny.yaml")
    fails_in_one_line(capsys, ["fit", "--config", base, "--config", str(old)], "mcrobust.threats.evasion.PGD")
