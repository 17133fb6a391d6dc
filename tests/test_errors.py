"""fail(): the one way every command reports a user error (one line, exit 2), importable without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcrobust.commands.repair import main as repair_main
from mcrobust.errors import EXIT_USAGE, debugging, fail

ROOT = Path(__file__).resolve().parents[1]


def test_fail_prints_one_line_and_exits_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fail("data.batch_size must be >= 1, got 0")
    assert exit_info.value.code == EXIT_USAGE == 2
    assert capsys.readouterr().err == "mcrobust: error: data.batch_size must be >= 1, got 0\n"


def test_debugging_follows_the_environment(monkeypatch):
    for value, expected in (("", False), ("0", False), ("1", True)):
        monkeypatch.setenv("MCROBUST_DEBUG", value)
        assert debugging() is expected
    monkeypatch.delenv("MCROBUST_DEBUG")
    assert not debugging()


def test_repair_argument_errors_go_through_fail(capsys):
    with pytest.raises(SystemExit) as exit_info:
        repair_main(["--net", "tiny"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcrobust: error: the following arguments are required: --model")
    assert lines[0].endswith("(see mcrobust repair --help)")


def test_the_errors_module_imports_neither_torch_nor_lightning():
    probe = (
        "import sys, mcrobust.errors, mcrobust.commands.repair\n"
        "print([m for m in ('torch', 'pytorch_lightning') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
