"""Small, dependency-free writers for result tables: Markdown for terminals and docs, CSV for tools."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcrobust.io.files import atomic_path


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers with `digits` significant decimals, None as '-', everything else as str."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-style Markdown table of `rows` restricted to `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it: readers never see a partial file."""
    target = Path(path)
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return target


def write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Atomically write `rows` as CSV with exactly `columns` (missing values left empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a CSV written by `write_csv`, numbers parsed back to float (empty cells to None)."""
    with open(path, newline="", encoding="utf-8") as stream:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(stream)]


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Atomically write `payload` as indented JSON."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def _number(value: str | None) -> Any:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value
