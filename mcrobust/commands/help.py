"""The `--help` of `mcrobust fit|validate|test|predict`: a screen or two instead of about 640 lines.

What made LightningCLI's help long: a usage line naming all ~100 options, every Trainer docstring in full, and the
"known subclasses" of each class-typed option (all of torch.optim and its schedulers, every Lightning logger,
callback, strategy and plugin). Here each option is one line: the flag with its value, then the first sentence of
its description; the only classes listed are mcrobust's own (the systems for `--model`, the callbacks for
`--trainer.callbacks`). After `--config FILE` the values are the config's, and the settings of its system and path
evaluation follow. `--KEY.help CLASS` still describes any class in full.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import importlib
import re
import textwrap
from collections.abc import Iterable
from typing import Any

from jsonargparse import DefaultHelpFormatter, Namespace

HIDDEN = ("optimizer", "lr_scheduler")
"""LightningCLI's own optimizer keys, not shown: the systems take theirs as `model.init_args.optimizer` (the keys
are still parsed, so a `config.yaml` that an older version saved re-runs)."""
BASE_SYSTEMS = ("ClassificationSystem",)
"""Exported from mcrobust.systems as the base every system shares, not a system to run by itself."""
CHOICES = {"model": "mcrobust.systems", "trainer.callbacks": "mcrobust.callbacks"}
"""Options whose help names mcrobust's classes (the package's `__all__`) instead of every known subclass."""
SUMMARIES = {
    "config": "a YAML config file; several apply in order; a file may list its parts: (docs/configs.md)",
    "model": "the system, a LightningModule class",
    "trainer.callbacks": "callbacks of the Trainer (add one: --trainer.callbacks+ CLASS)",
}
EPILOG = (
    "Any option takes a value on the command line (--trainer.max_epochs 5) and overrides the configs; a class's own "
    "settings are --KEY.init_args.NAME VALUE, and --KEY.help CLASS describes them (--model.help CurveSystem). "
    "--print_config shows the whole resolved config."
)
MAX_VALUE = 40
shown_config: contextvars.ContextVar[Namespace | None] = contextvars.ContextVar("shown_config", default=None)
"""The config parsed so far when `--help` is reached (the `--config` files before it), whose values help shows."""
overview: contextvars.ContextVar[bool] = contextvars.ContextVar("overview", default=False)
"""True while `--help` prints the one-line-per-option overview; `--KEY.help CLASS` keeps jsonargparse's full form."""


def first_sentence(text: str | None) -> str:
    """The first sentence of a docstring-style description, without reST markup or `Default: ...` notes."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", text or "")  # :class:`~a.b.C` -> C
    text = " ".join(re.sub(r"``([^`]*)``", r"\1", text).replace("`", "").split())
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z'\"(])", text)
    kept = [sentence for sentence in sentences if not sentence.startswith("Default")]
    return kept[0] if kept else ""


def short_value(value: Any, limit: int = MAX_VALUE) -> str:
    """A value as a command-line flag takes it, cut to `limit` characters; a class spec by its class name."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict) and "class_path" in value:
        text = str(value["class_path"]).rsplit(".", 1)[-1]
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(short_value(item, limit) for item in value) + "]"
    elif value is None or value is argparse.SUPPRESS:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def class_summary(value: Any, limit: int) -> str:
    """A class spec as `Name(key=value, ...)` over its non-null settings, cut to `limit`; other values as flags."""
    spec = value.as_dict() if isinstance(value, Namespace) else value
    if not (isinstance(spec, dict) and "class_path" in spec):
        return short_value(value, limit)
    settings = spec.get("init_args") or {}
    inner = ", ".join(f"{key}={short_value(item, limit)}" for key, item in settings.items() if item is not None)
    text = f"{short_value(spec, limit)}({inner})"
    return text if len(text) <= limit else text[: limit - 4] + "...)"


def settings_summary(value: Any) -> str | None:
    """A dataclass of settings (`data.bonafide`, `data.poison`) as `Name(key=value, ...)`; None for any other value.

    Its values are the point (the bonafide size, the poisoning rate), so help shows them, not only the class name.
    """
    spec = value.as_dict() if isinstance(value, Namespace) else value
    if not (isinstance(spec, dict) and "class_path" in spec):
        return None
    module, _, name = str(spec["class_path"]).rpartition(".")
    try:
        settings_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return class_summary(value, 2 * MAX_VALUE) if dataclasses.is_dataclass(settings_class) else None


def mcrobust_classes(package: str) -> list[str]:
    """The public classes of an mcrobust package (its `__all__`) by name, without the systems' shared base."""
    module = importlib.import_module(package)
    names = [name for name in getattr(module, "__all__", ()) if isinstance(getattr(module, name, None), type)]
    return [name for name in names if name not in BASE_SYSTEMS]


def config_value(config: Namespace | None, dest: str, default: Any) -> Any:
    """The value of `dest` in the config parsed so far, else the option's default."""
    if config is None:
        return default
    try:
        return config.get(dest, default)
    except (KeyError, TypeError):
        return default


class ExperimentHelp(argparse._HelpAction):
    """`-h/--help` that shows the values of the configs given before it (argparse's shows the defaults)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        tokens = shown_config.set(namespace if isinstance(namespace, Namespace) else None), overview.set(True)
        try:
            parser.print_help()
        finally:
            shown_config.reset(tokens[0])
            overview.reset(tokens[1])
        parser.exit()


class CompactHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter with one line per option: the flag with its value, then one sentence.

    Only in the `--help` overview; the full help of a class (`--KEY.help CLASS`) is jsonargparse's own.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 40, width: int | None = None):
        super().__init__(prog.replace(" [options]", ""), indent_increment, max_help_position, width)

    def _format_usage(self, usage: Any, actions: Iterable[argparse.Action], groups: Any, prefix: str | None) -> str:
        if not overview.get():
            return super()._format_usage(usage, actions, groups, prefix)
        actions = list(actions)
        flags = {option for action in actions for option in action.option_strings}
        parts = ["[-h]"] if "-h" in flags else []
        parts += ["[-c CONFIG]"] if "--config" in flags else []
        parts += ["[--print_config[=flags]]"] if "--print_config" in flags else []
        parts += ["[--KEY VALUE ...]"] if any("." in option for option in flags) else []
        parts += ["{" + ",".join(a.choices) + "} ..." for a in actions if isinstance(a, argparse._SubParsersAction)]
        return f"{'usage: ' if prefix is None else prefix}{' '.join([self._prog, *parts])}\n\n"

    def add_argument(self, action: argparse.Action) -> None:
        if shown(action) or not overview.get():
            super().add_argument(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not overview.get():
            return super()._format_action_invocation(action)
        long = [option for option in action.option_strings if option.startswith("--")]
        if action.dest == "print_config":
            return "--print_config[=flags]"
        if not long or action.nargs == 0 or action.dest == "config" or isinstance(action, argparse._HelpAction):
            return super()._format_action_invocation(action)
        value = config_value(shown_config.get(), action.dest, action.default)
        return f"{long[0]} {settings_summary(value) or short_value(value)}"

    def _expand_help(self, action: argparse.Action) -> str:
        return only_mcrobust_subclasses(super()._expand_help(action))

    def _format_action(self, action: argparse.Action) -> str:
        if not overview.get():
            return super()._format_action(action)
        if isinstance(action, argparse._SubParsersAction) or not action.option_strings:
            return argparse.HelpFormatter._format_action(self, action)
        head = " " * self._current_indent + self._format_action_invocation(action)
        column = min(self._action_max_length + 2, self._max_help_position)
        text = summary(action)
        if action.dest in CHOICES:  # the list of mcrobust's classes is the point: wrap it, never cut it
            lines = textwrap.wrap(text, max(self._width - column, 20)) or [""]
            first = head.ljust(column) if len(head) + 2 <= column else head + "\n" + " " * column
            return first + ("\n" + " " * column).join(lines) + "\n"
        line = head + (" " * max(column - len(head), 2) + text if text else "")
        return (line if len(line) <= self._width else line[: self._width - 3] + "...") + "\n"


def only_mcrobust_subclasses(text: str) -> str:
    """jsonargparse's "known subclasses: ..." list cut to mcrobust's public classes (torch and Lightning bring
    hundreds; the systems are the choices of `--model` only, listed by the overview)."""
    head, found, tail = text.partition(", known subclasses: ")
    if not found:
        return text
    names = [name.strip() for name in tail.rstrip(")").split(",")]
    kept = [name for name in names if name.startswith("mcrobust.") and name.count(".") <= 2]
    kept = [name for name in kept if not name.startswith("mcrobust.systems.")]
    others = len(names) - len(kept)
    listed = ", ".join(kept + ([f"{others} from torch/Lightning"] if others else []))
    return f"{head}, known subclasses: {listed})"


def shown(action: argparse.Action) -> bool:
    """Whether help lists the option: not LightningCLI's optimizer keys, `--KEY.help` or `--trainer CONFIG`."""
    dest = action.dest
    config_of_a_group = "." not in dest and type(action).__name__ == "_ActionConfigLoad"
    return dest.split(".", 1)[0] not in HIDDEN and not dest.endswith(".help") and not config_of_a_group


def summary(action: argparse.Action) -> str:
    """The option's one sentence, with mcrobust's classes for `--model` and `--trainer.callbacks`."""
    if isinstance(action, argparse._HelpAction):
        return "show this help and exit (after --config FILE: with its values)"
    text = SUMMARIES.get(action.dest) or first_sentence(action.help if action.help != argparse.SUPPRESS else "")
    package = CHOICES.get(action.dest)
    return f"{text.rstrip('.')}; mcrobust's: {', '.join(mcrobust_classes(package))}" if package else text


def class_settings(config: Namespace | None, key: str, width: int = 120) -> list[str]:
    """The settings of the class the config sets at `key`, one `name  value` line each (empty when none)."""
    value = config_value(config, key, None)
    if not isinstance(value, Namespace) or not value.get("class_path"):
        return []
    init_args = value.get("init_args")
    settings = init_args.as_dict() if isinstance(init_args, Namespace) else dict(init_args or {})
    lines = [f"{key}: {value['class_path']} (one setting: --{key}.init_args.NAME VALUE)"]
    column = max((len(name) for name in settings), default=0) + 4
    for name, setting in settings.items():
        if setting is not None:
            lines.append(f"  {name.ljust(column - 2)}{class_summary(setting, width - column)}")
            lines += [
                f"    {inner.ljust(column - 4)}{class_summary(spec, width - column)}"
                for inner, spec in inner_classes(setting)
            ]
    return lines


def inner_classes(setting: Any) -> list[tuple[str, Any]]:
    """The class specs among a class spec's own settings (the path evaluator's attack), each shown on its own line."""
    spec = setting.as_dict() if isinstance(setting, Namespace) else setting
    init_args = (spec.get("init_args") or {}) if isinstance(spec, dict) and "class_path" in spec else {}
    return [(name, item) for name, item in init_args.items() if isinstance(item, dict) and "class_path" in item]


def experiment_sections(config: Namespace | None) -> str:
    """The system's and the path evaluation's settings in the config parsed so far, as help text."""
    sections = ["\n".join(lines) for key in ("model", "path_evaluation") if (lines := class_settings(config, key))]
    return "\nthis config's settings of its classes:\n" + "\n\n".join(sections) + "\n" if sections else ""
