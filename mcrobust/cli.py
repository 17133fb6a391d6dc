"""The `mcrobust` command: LightningCLI with fit / validate / test / predict and one-line user errors.

`mcrobust fit --config configs/experiments/<file>.yaml` runs any system on any data set; a mistake the user
can fix prints `mcrobust: error: ...` and exits with status 2 (set MCROBUST_DEBUG=1 for the traceback).
Before a run starts its output folders are checked; a run that fails before its first batch removes what it
created there (docs/threat_model.md).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from mcrobust.atomic import atomic_path
from mcrobust.data.datamodules import RobustDataModule
from mcrobust.errors import ConfigError, MCRobustError
from mcrobust.guards import OutputSnapshot, check_resume_checkpoint, check_writable_folder

EXIT_USAGE = 2
DEBUG_VARIABLE = "MCROBUST_DEBUG"
CKPT_SHORTHANDS = ("last", "best", "hpc")
"""`ckpt_path` values Lightning resolves itself (plus `registry:...` and remote URLs, left to Lightning too)."""


def debugging() -> bool:
    """Whether the user asked for full tracebacks."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def fail(message: str) -> NoReturn:
    """Print one line for the user and exit with status 2."""
    sys.stderr.write(f"mcrobust: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "Given value")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: --?(\S+)")
_REMOTE_ERROR = re.compile(r"^(mcrobust(?:\.\w+)+): (.+)$", re.MULTILINE)


def summarize_parser_error(message: str) -> str:
    """Reduce jsonargparse's nested error text to one line: the offending key and the innermost reason."""
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    if not lines:
        return message
    found = re.search(r"No action for key \"([^\"]+)\"", message) or _UNRECOGNIZED.search(message)
    if found:
        return f"unknown key {found.group(1)!r} (check its spelling; `--help` lists the valid keys)"
    details = [line for line in lines[1:] if not line.startswith(_NOISE)]
    head = lines[0].rstrip(":")
    return f"{head}: {' '.join(details[-2:])}" if details else head


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug.

    jsonargparse wraps errors of the classes it instantiates and a spawned DDP worker's error reaches the parent
    only as text, so the causes and that text are searched for an `MCRobustError`; Lightning's own
    `MisconfigurationException` (e.g. a negative max_epochs) is a user error too.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (MCRobustError, MisconfigurationException)):
            return _first_line(current)
        current = current.__cause__ or current.__context__
    for name, message in _REMOTE_ERROR.findall(str(error)):
        module, _, cls = name.rpartition(".")
        found = getattr(sys.modules.get(module) or _import(module), cls, None)
        if isinstance(found, type) and issubclass(found, MCRobustError):
            return message.strip()
    return None


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class MCRobustArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line instead of pages of usage."""

    context: str | None = None
    """Set while LightningCLI merges a checkpoint's hyperparameters: errors then raise ConfigError with it."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if self.context is not None and not debugging():
            raise ConfigError(f"{self.context}: {summarize_parser_error(message)}") from ex
        if debugging() or not self.exit_on_error:
            super().error(message, ex)
        fail(summarize_parser_error(message))


class RunStarted(Callback):
    """Notes whether any loop has begun its first batch: before that, a failed run has produced nothing."""

    def __init__(self) -> None:
        self.started = False

    def _mark(self, *args: Any, **kwargs: Any) -> None:
        self.started = True

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _mark


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with the temporary file beside the checkpoint, renamed into place.

    Lightning writes through an fsspec transaction whose temporary file lies in $TMPDIR: when that is another file
    system the final move is a copy, and a run killed during it leaves a truncated `last.ckpt`. The temporary name
    does not contain 'last', so `--ckpt_path last` never picks one a killed run left behind.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path, prefix=".mcrobust-") as temporary:
            torch.save(checkpoint, temporary)
        return None


class MCRobustCLI(LightningCLI):
    """LightningCLI over every mcrobust system (subclass mode) and `RobustDataModule`.

    Before a subcommand runs, every output folder is checked (one line naming the folder and its setting when it
    cannot be written) and its contents are recorded; if the run then fails before its first batch (a bad
    checkpoint, missing data, an impossible size found in `setup`), the files and folders it created are removed.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {"inference_mode": False})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self.run_started = RunStarted()
        self.output_snapshot: OutputSnapshot | None = None
        super().__init__(
            model_class=pl.LightningModule,
            datamodule_class=RobustDataModule,
            subclass_mode_model=True,
            parser_class=MCRobustArgumentParser,
            args=args,
            run=run,
            **kwargs,
        )

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self.run_started)  # type: ignore[attr-defined]
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a plugin the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def output_folders(self) -> list[tuple[str, Path]]:
        """(setting, folder) of every place the run writes: loggers, default_root_dir, callbacks' dirpath."""
        trainer = self.trainer
        folders = [("trainer.default_root_dir", Path(trainer.default_root_dir))] if not trainer.loggers else []
        for logger in trainer.loggers:
            save_dir = getattr(logger, "save_dir", None)
            if save_dir:
                folders.append(("trainer.logger.init_args.save_dir", Path(save_dir)))
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            dirpath = getattr(callback, "dirpath", None)
            if isinstance(dirpath, (str, os.PathLike)):
                folders.append((f"{type(callback).__name__} dirpath", Path(dirpath)))
        return [(setting, folder) for setting, folder in folders if "://" not in str(folder)]

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check `ckpt_path` before LightningCLI reads the checkpoint's hyperparameters into the config."""
        super().parse_arguments(parser, args)
        ckpt_path = self.subcommand_setting("ckpt_path")
        if not ckpt_path or str(ckpt_path) in CKPT_SHORTHANDS or str(ckpt_path).startswith("registry"):
            return
        if "://" not in str(ckpt_path):
            check_resume_checkpoint(ckpt_path, trusted=self.subcommand_setting("weights_only") is False)
        if isinstance(parser, MCRobustArgumentParser):
            parser.context = f"the hyperparameters saved in ckpt_path {ckpt_path} do not fit this config"

    def subcommand_setting(self, key: str) -> Any:
        """A subcommand argument such as `ckpt_path` from the parsed config (None when absent)."""
        subcommand = self.config.get("subcommand")
        section = self.config.get(subcommand) if subcommand else None
        return section.get(key) if section is not None else None

    def before_instantiate_classes(self) -> None:
        if isinstance(self.parser, MCRobustArgumentParser):
            self.parser.context = None

    def prepare_run(self) -> None:
        """Check the output folders, then record what the run's folders hold now; load `ckpt_path` weights_only."""
        config = self.config_init.get(str(self.subcommand))
        if config is not None and "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True  # explicit, whatever torch's default or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD say
        for setting, folder in self.output_folders():
            check_writable_folder(folder, setting)
        run_folders, trainer = [], self.trainer
        for logger in trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)  # the version folder; nothing is created by asking
            if isinstance(log_dir, str) and "://" not in log_dir:
                run_folders.append(Path(log_dir))
        # without a versioned logger, set-up files go to a folder shared with other things: remove only those
        shared = [Path(trainer.log_dir or trainer.default_root_dir)] if not run_folders else []
        self.output_snapshot = OutputSnapshot(run_folders, shared_folders=shared)

    def before_fit(self) -> None:
        self.prepare_run()

    def before_validate(self) -> None:
        self.prepare_run()

    def before_test(self) -> None:
        self.prepare_run()

    def before_predict(self) -> None:
        self.prepare_run()

    def _run_subcommand(self, subcommand: str) -> None:
        # LightningCLI's own dispatcher (before_<subcommand>, the trainer call, after_<subcommand>), wrapped so a
        # run that fails before its first batch leaves its output folders as it found them.
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.output_snapshot is not None and not self.run_started.started and self.trainer.is_global_zero:
                self.output_snapshot.remove_new()
            raise


def run_cli(args: list[str] | None = None, **kwargs: Any) -> MCRobustCLI:
    """Run the CLI; user errors become one line on stderr and SystemExit(2)."""
    try:
        return MCRobustCLI(args=args, **kwargs)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as error:
        message = user_error_message(error)
        if message is None or debugging():
            raise
        fail(message)


def main(args: list[str] | None = None) -> None:
    """Entry point of the `mcrobust` console script and `python -m mcrobust`."""
    run_cli(args)


if __name__ == "__main__":
    main()
