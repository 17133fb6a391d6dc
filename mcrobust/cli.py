"""The `mcrobust` command: LightningCLI with fit / validate / test / predict and one-line user errors.

`mcrobust fit --config configs/experiments/<file>.yaml` runs any system on any data set; a mistake the user
can fix prints `mcrobust: error: ...` and exits with status 2 (set MCROBUST_DEBUG=1 for the traceback).
A config may list the files it is composed of under `parts:` (docs/configs.md); `path_evaluation:` holds the
`PathEvaluation` callback, so `--path_evaluation.num_points 3` changes one setting of it. Before a run starts its
output folders are checked; a run that fails before its first batch removes what it created there
(docs/threat_model.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.plugins import TorchCheckpointIO

from mcrobust.callbacks import ExportPoint, PathEvaluation
from mcrobust.commands.help import EPILOG, CompactHelpFormatter, ExperimentHelp, experiment_sections, shown_config
from mcrobust.commands.logs import HeldLogs, quiet_lightning
from mcrobust.commands.messages import resolve_class, summarize_parser_error, user_error_message
from mcrobust.commands.parts import expand_config_args
from mcrobust.data.datamodules import RobustDataModule
from mcrobust.errors import CheckpointError, ConfigError, debugging, fail
from mcrobust.io.files import atomic_torch_save
from mcrobust.io.preflight import OutputSnapshot, check_writable_folder
from mcrobust.io.trust import check_checkpoint_classes, check_resume_checkpoint, nested_strings
from mcrobust.utils.checks import check_settings

CKPT_SHORTHANDS = ("last", "best", "hpc")
"""`ckpt_path` values Lightning resolves itself (plus `registry:...` and remote URLs, left to Lightning too)."""


class MCRobustArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line instead of pages of usage, and whose `--help` fits a
    screen or two (mcrobust.commands.help) and shows the values of the configs given before it."""

    context: str | None = None
    """Set while LightningCLI merges a checkpoint's hyperparameters: errors then raise ConfigError with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", "mcrobust")
        kwargs.setdefault("formatter_class", CompactHelpFormatter)
        kwargs.setdefault("epilog", EPILOG)
        add_help = kwargs.pop("add_help", True)
        super().__init__(*args, add_help=False, **kwargs)
        if add_help:
            self.add_argument("-h", "--help", action=ExperimentHelp, default=argparse.SUPPRESS)

    def format_help(self, formatter: Any = None) -> str:
        return super().format_help(formatter) + experiment_sections(shown_config.get())

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        own = user_error_message(ex) if ex is not None else None
        if self.context is not None and not debugging():
            raise ConfigError(f"{self.context}: {own or summarize_parser_error(message)}") from ex
        if debugging() or not self.exit_on_error:
            super().error(message, ex)
        fail(own or summarize_parser_error(message))


class RunStarted(Callback):
    """Notes whether any loop has begun its first batch: before that, a failed run has produced nothing.

    Args:
        on_start: called once, at the first batch.
    """

    def __init__(self, on_start: Any = None) -> None:
        self.started = False
        self.on_start = on_start

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks into each worker; `on_start` belongs to the launching process
        return {**self.__dict__, "on_start": None}

    def _mark(self, *args: Any, **kwargs: Any) -> None:
        if not self.started and self.on_start is not None:
            self.on_start()
        self.started = True

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _mark


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with the temporary file beside the checkpoint, renamed into place.

    Lightning writes through an fsspec transaction whose temporary file lies in $TMPDIR: when that is another file
    system the final move is a copy, and a run killed during it leaves a truncated `last.ckpt`. The temporary name
    does not contain 'last', so `--ckpt_path last` never picks one a killed run left behind. The checkpoint is
    serialised in memory first: its bytes do not depend on the temporary name, and a full disk is one line.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path, prefix=".mcrobust-")
        return None


GROUP_TITLES = {
    "trainer": "trainer: pytorch_lightning.Trainer (any of its arguments, --trainer.NAME VALUE)",
    "model": "model: the system, a LightningModule (its settings: --model.init_args.NAME VALUE)",
    "data": "data: mcrobust.data.datamodules.RobustDataModule",
    "path_evaluation": "path_evaluation: mcrobust.callbacks.PathEvaluation (one setting: --path_evaluation.NAME VALUE)",
}


def subcommand_section(config: Any, subcommand: str | None) -> Any:
    """The part of a parsed (or instantiated) config that belongs to `subcommand` (the whole config without one)."""
    section = config.get(subcommand) if subcommand else None
    return section if section is not None else config


def with_path_evaluation(callbacks: Any, evaluation: PathEvaluation | None) -> list[Callback]:
    """The trainer's callbacks with `evaluation` placed before the first `ExportPoint`, which exports its choice.

    The evaluation is added exactly once: a `PathEvaluation` in `trainer.callbacks` as well is refused, since two
    sweeps would write the same table.
    """
    listed = [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    if evaluation is None:
        return listed
    if any(isinstance(callback, PathEvaluation) for callback in listed):
        raise ConfigError(
            "PathEvaluation is set twice, in path_evaluation and in trainer.callbacks: keep one "
            "(--path_evaluation null drops the first)"
        )
    exports = [index for index, callback in enumerate(listed) if isinstance(callback, ExportPoint)]
    listed.insert(exports[0] if exports else len(listed), evaluation)
    return listed


class MCRobustCLI(LightningCLI):
    """LightningCLI over every mcrobust system (subclass mode) and `RobustDataModule`.

    A `--ckpt_path` is checked before LightningCLI merges its hyperparameters into the config: it must be a
    finite Lightning checkpoint of the config's system class whose hyperparameters name only trusted classes.
    Settings that torch would refuse only mid-start are checked before anything is built. Before a subcommand
    runs, every output folder is checked (one line naming the folder and its setting when it cannot be written)
    and its contents are recorded; if the run then fails before its first batch (a bad checkpoint, missing data,
    an impossible size found in `setup`), the files and folders it created are removed and Lightning's set-up
    log lines are dropped, so the error is the only line.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        quiet_lightning()
        kwargs.setdefault("trainer_defaults", {"inference_mode": False})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self.held_logs = HeldLogs()
        self.run_started = RunStarted(on_start=lambda: self.held_logs.restore(replay=True))
        self.output_snapshot: OutputSnapshot | None = None
        self.resume_checkpoint: dict[str, Any] | None = None
        self.held_logs.hold()
        try:
            super().__init__(
                model_class=pl.LightningModule,
                datamodule_class=RobustDataModule,
                subclass_mode_model=True,
                parser_class=MCRobustArgumentParser,
                args=args,
                run=run,
                **kwargs,
            )
        except BaseException:
            self.held_logs.restore(replay=self.run_started.started or debugging())
            raise
        self.held_logs.restore(replay=True)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """`path_evaluation:`, the `PathEvaluation` callback outside the callback list, so that one of its settings
        changes from the command line (`--path_evaluation.num_points 3`); null (the default) evaluates nothing."""
        parser.add_subclass_arguments(
            PathEvaluation,
            "path_evaluation",
            required=False,
            fail_untyped=False,
            help="the path evaluation, run before the trainer's ExportPoint; null: none",
        )
        groups = parser.groups or {}
        for key, title in GROUP_TITLES.items():
            if key in groups:
                groups[key].title = title

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        if "callbacks" not in kwargs:
            section = subcommand_section(self.config_init, self.subcommand)
            trainer_settings = section.get("trainer") or {}
            kwargs["callbacks"] = with_path_evaluation(
                trainer_settings.get("callbacks"), section.get("path_evaluation")
            )
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
        """Expand the configs' `parts:`, parse, then read and check a local `ckpt_path` (Lightning resolves
        shorthands and URLs itself)."""
        if args is None:  # the command line itself, as LightningCLI reads it
            self.config = parser.parse_args(expand_config_args(sys.argv[1:]))
        elif isinstance(args, (list, tuple)):
            super().parse_arguments(parser, expand_config_args(args))
        else:
            super().parse_arguments(parser, args)
        ckpt_path = self.subcommand_setting("ckpt_path")
        if not ckpt_path or str(ckpt_path) in CKPT_SHORTHANDS or str(ckpt_path).startswith("registry"):
            return
        if "://" not in str(ckpt_path):
            trusted = self.subcommand_setting("weights_only") is False
            self.resume_checkpoint = check_resume_checkpoint(ckpt_path, trusted=trusted)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's merge of the `ckpt_path` hyperparameters into the config, after checking what they name.

        LightningCLI would import every class they name and switch the system to the checkpoint's class: here a
        class outside the trusted packages and the user's config is refused before anything is imported, and a
        checkpoint of another system class than the config's is an error that names both.
        """
        checkpoint, ckpt_path = self.resume_checkpoint, self.subcommand_setting("ckpt_path")
        self.resume_checkpoint = None  # its tensors are memory-mapped: do not keep the file open for the run
        hparams = checkpoint.get("hyper_parameters") if checkpoint is not None else None
        if not hparams:
            return
        if not isinstance(hparams, dict):
            raise CheckpointError(f"ckpt_path {ckpt_path} has hyper_parameters of type {type(hparams).__name__}")
        check_checkpoint_classes(hparams, ckpt_path, named=(value for _, value in nested_strings(self.config_dict())))
        hparams = {key: value for key, value in hparams.items() if key != "_instantiator"}
        self.check_system_class(hparams.get("_class_path"), ckpt_path)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        if isinstance(self.parser, MCRobustArgumentParser):
            self.parser.context = f"the hyperparameters saved in ckpt_path {ckpt_path} do not fit this config"
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        if isinstance(self.parser, MCRobustArgumentParser):
            self.parser.context = None

    def config_dict(self) -> dict[str, Any]:
        """The parsed config of the subcommand as nested dicts."""
        subcommand = self.config.get("subcommand")
        section = self.config.get(subcommand) if subcommand else self.config
        return section.as_dict() if section is not None else {}

    def check_system_class(self, saved: str | None, ckpt_path: Any) -> None:
        """Raise CheckpointError when the checkpoint's system class is not the config's `model.class_path`."""
        model = self.subcommand_setting("model")
        configured = model.get("class_path") if model is not None and hasattr(model, "get") else None
        if not saved or not configured or saved == configured or resolve_class(saved) is resolve_class(configured):
            return
        raise CheckpointError(
            f"ckpt_path {ckpt_path} is a checkpoint of {saved}, but the config's model is {configured}; give the "
            f"config the checkpoint was written with, or a checkpoint of {configured.rsplit('.', 1)[-1]}"
        )

    def subcommand_setting(self, key: str) -> Any:
        """A subcommand argument such as `ckpt_path` from the parsed config (None when absent)."""
        subcommand = self.config.get("subcommand")
        section = self.config.get(subcommand) if subcommand else None
        return section.get(key) if section is not None else None

    def before_instantiate_classes(self) -> None:
        if isinstance(self.parser, MCRobustArgumentParser):
            self.parser.context = None
        check_settings(self.config_dict())

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
        for setting, folder in self.run_subfolders(run_folders):
            check_writable_folder(folder, setting)
        # without a versioned logger, set-up files go to a folder shared with other things: remove only those
        shared = [Path(trainer.log_dir or trainer.default_root_dir)] if not run_folders else []
        self.output_snapshot = OutputSnapshot(run_folders, shared_folders=shared)

    def run_subfolders(self, run_folders: list[Path]) -> list[tuple[str, Path]]:
        """(setting, folder) of the version folders and the `checkpoints/` a ModelCheckpoint makes in them."""
        folders = [("trainer.logger.init_args.name / version", folder) for folder in run_folders]
        if self.trainer.loggers and not run_folders:
            return folders  # a remote logger: its checkpoints go there too
        base = run_folders[0] if run_folders else Path(self.trainer.default_root_dir)
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                folders.append(("ModelCheckpoint dirpath", base / "checkpoints"))
        return folders

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


def resolved_config(*configs: str | Path, args: Sequence[str] = (), subcommand: str = "fit") -> dict[str, Any]:
    """The whole config that `mcrobust <subcommand> --config <each> ... <args> --print_config` prints, as dicts.

    The path users take (parts expanded, configs merged, defaults filled in), for tests and scripts that read a
    setting of an experiment without building it.
    """
    command = [subcommand, *(item for config in configs for item in ("--config", str(config))), *args]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            run_cli([*command, "--print_config"])
        except SystemExit as exit_info:
            if exit_info.code not in (0, None):
                raise
    loaded = yaml.safe_load(printed.getvalue())
    return loaded if isinstance(loaded, dict) else {}


def main(args: list[str] | None = None) -> None:
    """Entry point of the `mcrobust` console script and `python -m mcrobust`."""
    # the command line itself: LightningCLI reads sys.argv (given both, it warns that they might differ)
    run_cli(None if args is not None and list(args) == sys.argv[1:] else args)


if __name__ == "__main__":
    main()
