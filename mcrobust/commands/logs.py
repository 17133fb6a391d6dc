"""Quiet output for the command line: Lightning's advertising tips and known-harmless warnings filtered, and its
start-up lines held until a run really starts (a run that fails first prints its one error line only)."""

from __future__ import annotations

import logging
import os
import warnings

TIP_LOGGERS = (
    "lightning_utilities.core.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
)
"""The loggers Lightning's `rank_zero_info` writes through (whichever of the three the installed versions use)."""


HARMLESS_WARNINGS = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # torch, from Lightning's _pytree
    (UserWarning, r"LightningCLI's args parameter is intended to run from within Python"),  # scripts' run_cli(args)
)


class AdvertisingFilter(logging.Filter):
    """Drops Lightning's advertising tips ("💡 Tip: ... try installing litlogger / litmodels"): they promote a cloud
    service and say nothing about the run. Lightning has no setting for them, so a logging filter removes them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """Silence what only adds noise to a run's output: advertising tips and known-harmless deprecation warnings.

    jsonargparse's own switch (`JSONARGPARSE_DEPRECATION_WARNINGS=off`) silences its deprecation notices unless the
    user set that variable; every genuine warning (a setting that will not do what it says) still shows.
    """
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, AdvertisingFilter) for existing in logger.filters):
            logger.addFilter(AdvertisingFilter())


class HeldLogs(logging.Handler):
    """Holds the log records of Lightning and Fabric until the run starts; a start that fails drops them.

    Lightning prints its set-up lines (seed, accelerators, tips, restored states) before anything can tell whether
    the run will start: a user whose run fails before its first batch then sees the one error line only.
    """

    LOGGERS = ("pytorch_lightning", "lightning_fabric")

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.saved: dict[str, tuple[list[logging.Handler], bool]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __reduce__(self) -> tuple[type, tuple[()]]:
        # ddp_spawn pickles the CLI (LightningCLI's instantiator holds it): a worker gets a fresh one that holds nothing
        return HeldLogs, ()

    def hold(self) -> None:
        """Send the loggers' records here instead of to their handlers."""
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self.saved[name] = (logger.handlers[:], logger.propagate)
            logger.handlers, logger.propagate = [self], False

    def restore(self, replay: bool) -> None:
        """Give the loggers their handlers back and, with `replay`, pass them the records held so far."""
        for name, (handlers, propagate) in self.saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        self.saved = {}
        records, self.records = self.records, []
        for record in records if replay else ():
            owner = next(name for name in self.LOGGERS if record.name.split(".")[0] == name)
            logging.getLogger(owner).callHandlers(record)
