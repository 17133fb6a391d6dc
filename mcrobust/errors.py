"""Errors a user can fix, and `fail`, which every command uses to print one as one line and exit with status 2.

Imports nothing heavy (no torch, no Lightning): `mcrobust --help` and `mcrobust repair --help` stay instant.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

EXIT_USAGE = 2
"""Exit status of a user error (argparse's, too)."""
DEBUG_VARIABLE = "MCROBUST_DEBUG"
"""Set it to 1 to see the traceback of a user error instead of its one line."""


class MCRobustError(Exception):
    """Base class of every error whose message tells the user what to fix."""


class ConfigError(MCRobustError, ValueError):
    """An impossible or inconsistent setting (sizes, ranges, names)."""


class DataError(MCRobustError):
    """A data set that is missing, malformed or does not match the configuration."""


class CheckpointError(MCRobustError):
    """A checkpoint that is missing, unsafe to load, or does not fit the network."""


def debugging() -> bool:
    """Whether the user asked for full tracebacks (MCROBUST_DEBUG set, and not to 0)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def fail(message: str) -> NoReturn:
    """Print `mcrobust: error: <message>` on stderr and exit with status 2: how every command reports a user error.

    Args:
        message: one line naming the setting and the fix.
    """
    sys.stderr.write(f"mcrobust: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an error's message (its class name when it has none), cut to `limit` characters."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None else line[:limit]
