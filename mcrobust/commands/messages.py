"""Exceptions turned into the one line a user reads: the project's own error found wherever jsonargparse or a spawned
worker buried it, jsonargparse's nested text reduced to the offending key, and a moved 0.1 module path named."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from typing import Any

from mcrobust.commands.moved import moved_hint
from mcrobust.errors import MCRobustError, first_line

_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "Given value")


_UNRECOGNIZED = re.compile(r"unrecognized arguments: --?(\S+)")


_REMOTE_ERROR = re.compile(r"^(mcrobust(?:\.\w+)+): (.+)$", re.MULTILINE)


def summarize_parser_error(message: str) -> str:
    """Reduce jsonargparse's nested error text to one line: the offending key and the innermost reason."""
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    if not lines:
        return message
    hint = moved_hint(message)  # a config written for mcrobust 0.1 names modules that have moved
    if hint is not None:
        return hint
    found = re.search(r"No action for key \"([^\"]+)\"", message) or _UNRECOGNIZED.search(message)
    if found:
        return f"unknown key {found.group(1)!r} (check its spelling; `--help` lists the valid keys)"
    details = [line for line in lines[1:] if not line.startswith(_NOISE)]
    head = lines[0].rstrip(":")
    return f"{head}: {' '.join(details[-2:])}" if details else head


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug.

    The project's own errors come first: jsonargparse wraps errors of the classes it instantiates, and a Union
    setting keeps only the first subtype's error as the cause (the others are text in its message), so the causes,
    then the exceptions held by the frames the error passed through, are searched for an `MCRobustError`. A
    spawned DDP worker's error reaches the parent only as text. Lightning's own `MisconfigurationException` (e.g. a
    negative max_epochs) is a user error too.
    """
    chain = list(causes(error))
    found: BaseException | None = next((e for e in chain if isinstance(e, MCRobustError)), None)
    found = found or held_project_error(chain) or next((e for e in chain if is_misconfiguration(e)), None)
    if found is not None:
        return first_line(found)
    for name, message in _REMOTE_ERROR.findall(str(error)):
        module, _, cls = name.rpartition(".")
        imported = getattr(sys.modules.get(module) or import_or_none(module), cls, None)
        if isinstance(imported, type) and issubclass(imported, MCRobustError):
            return message.strip()
    return None


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, its cause, the cause's cause, ... (or the context where there is no cause)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def held_project_error(chain: list[BaseException]) -> MCRobustError | None:
    """An MCRobustError that a frame on the errors' way held, innermost first (jsonargparse's Union tries)."""
    for error in chain:
        frames = []
        trace = error.__traceback__
        while trace is not None:
            frames.append(trace.tb_frame)
            trace = trace.tb_next
        for frame in reversed(frames):
            for value in frame.f_locals.values():
                items = value if isinstance(value, (list, tuple)) else (value,)
                found = next((item for item in items if isinstance(item, MCRobustError)), None)
                if found is not None:
                    return found
    return None


def resolve_class(class_path: str) -> Any:
    """The class at `class_path` (trusted: checked by `check_checkpoint_classes`), or None."""
    module, _, name = class_path.rpartition(".")
    return getattr(import_or_none(module), name, None) if module else None


def import_or_none(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def is_misconfiguration(error: BaseException) -> bool:
    """Lightning's MisconfigurationException, recognised by name so that this module never imports Lightning."""
    return any(cls.__name__ == "MisconfigurationException" for cls in type(error).__mro__)
