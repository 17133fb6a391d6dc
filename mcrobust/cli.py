"""The `mcrobust` command: LightningCLI with fit / validate / test / predict and one-line user errors.

`mcrobust fit --config configs/experiments/<file>.yaml` runs any system on any data set; a mistake the user
can fix prints `mcrobust: error: ...` and exits with status 2 (set MCROBUST_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, NoReturn

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from mcrobust.data.datamodules import RobustDataModule
from mcrobust.errors import MCRobustError

EXIT_USAGE = 2
DEBUG_VARIABLE = "MCROBUST_DEBUG"


def debugging() -> bool:
    """Whether the user asked for full tracebacks."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def fail(message: str) -> NoReturn:
    """Print one line for the user and exit with status 2."""
    sys.stderr.write(f"mcrobust: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "Given value")


def summarize_parser_error(message: str) -> str:
    """Reduce jsonargparse's nested error text to one line: the offending key and the innermost reason."""
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    if not lines:
        return message
    found = re.search(r"No action for key \"([^\"]+)\"", message)
    if found:
        return f"unknown key {found.group(1)!r} (check its spelling; `--help` lists the valid keys)"
    details = [line for line in lines[1:] if not line.startswith(_NOISE)]
    head = lines[0].rstrip(":")
    return f"{head}: {' '.join(details[-2:])}" if details else head


class MCRobustArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line instead of pages of usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if debugging() or not self.exit_on_error:
            super().error(message, ex)
        fail(summarize_parser_error(message))


class MCRobustCLI(LightningCLI):
    """LightningCLI over every mcrobust system (subclass mode) and `RobustDataModule`."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {"inference_mode": False})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            model_class=pl.LightningModule,
            datamodule_class=RobustDataModule,
            subclass_mode_model=True,
            parser_class=MCRobustArgumentParser,
            args=args,
            run=run,
            **kwargs,
        )


def run_cli(args: list[str] | None = None, **kwargs: Any) -> MCRobustCLI:
    """Run the CLI; user errors become one line on stderr and SystemExit(2)."""
    try:
        return MCRobustCLI(args=args, **kwargs)
    except MCRobustError as error:
        if debugging():
            raise
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)


def main(args: list[str] | None = None) -> None:
    """Entry point of the `mcrobust` console script and `python -m mcrobust`."""
    run_cli(args)


if __name__ == "__main__":
    main()
