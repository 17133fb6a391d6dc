"""Config files composed from parts: a top-level `parts:` list names the files a config builds on.

An experiment file lists the shared pieces it uses (trainer, data set, net, system, path evaluation), paths relative
to the file, and then holds only what makes it that experiment:

    parts:
      - ../parts/trainer/default.yaml
      - ../parts/data/digits.yaml
    trainer:
      max_epochs: 15

Before LightningCLI parses, `expand_config_args` replaces each `--config FILE` whose YAML has `parts:` by one
`--config` per part, in order (a part's own parts first, each file once), then FILE's own settings. So the parts
are nothing but earlier `--config` files: later files and command-line flags override them with jsonargparse's
merge rules (nested keys merge, a list replaces the earlier list, `key+:` appends to it). `--print_config` and the
`config.yaml` a run saves hold the resolved config, which re-runs without the parts. Plain YAML and pathlib only:
no Lightning, so the expansion can be tested and reused without the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mcrobust.errors import ConfigError

PARTS_KEY = "parts"
CONFIG_FLAGS = ("--config", "-c")


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a config file (empty for an empty file); ConfigError for a file that is not a YAML mapping."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config {path} is not valid YAML{where}: fix its syntax") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of settings, got a {type(loaded).__name__}")
    return loaded


def listed_parts(path: Path, settings: dict[str, Any]) -> list[Path]:
    """The files named by `settings['parts']`, resolved against the folder of `path`."""
    names = settings.get(PARTS_KEY) or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"config {path}: `{PARTS_KEY}:` must be a list of file paths (relative to the file)")
    parts = []
    for name in names:
        part = (path.parent / name).resolve()
        if not part.is_file():
            raise ConfigError(
                f"config {path}: part {name} not found (looked for {part}); fix the path in its `{PARTS_KEY}:` "
                "list (paths are relative to the file that lists them)"
            )
        parts.append(part)
    return parts


def config_chain(path: str | Path) -> list[Path]:
    """Every file `path` is composed of, in the order they apply: parts depth first, each file once, `path` last.

    A file included twice (two parts sharing a base) applies at its first place only, so a later part's settings
    are never undone by a repeated base. A file that includes itself, directly or through other parts, is refused.
    """
    chain: list[Path] = []
    _visit(Path(path).resolve(), chain, stack=[])
    return chain


def _visit(path: Path, chain: list[Path], stack: list[Path]) -> None:
    if path in stack:
        cycle = " -> ".join(str(item) for item in [*stack[stack.index(path) :], path])
        raise ConfigError(f"config parts include each other in a cycle ({cycle}); remove one of these includes")
    if path in chain:
        return
    for part in listed_parts(path, read_yaml(path)):
        _visit(part, chain, [*stack, path])
    chain.append(path)


def own_settings(path: Path) -> str | None:
    """The settings of `path` without its `parts:` key, as YAML text (None when nothing is left)."""
    settings = {key: value for key, value in read_yaml(path).items() if key != PARTS_KEY}
    return yaml.safe_dump(settings, sort_keys=False) if settings else None


def composes_parts(value: str) -> bool:
    """Whether `value` of a `--config` flag is a file with a `parts:` list (inline YAML strings never are; a file
    that is no YAML mapping is left to jsonargparse, which reports it as for any config)."""
    try:
        return Path(value).is_file() and PARTS_KEY in read_yaml(Path(value))
    except (OSError, ConfigError):  # OSError: a YAML string too long to be a file name
        return False


def expanded_config(value: str) -> list[str]:
    """The `--config` arguments that stand for the composed file `value`: each file of its chain in order, as its
    path, or as its settings without `parts:` (YAML text, which `--config` takes too) when it lists parts itself."""
    args: list[str] = []
    for path in config_chain(value):
        own = own_settings(path) if PARTS_KEY in read_yaml(path) else str(path)
        args += ["--config", own] if own is not None else []
    return args


def expand_config_args(args: Sequence[str]) -> list[str]:
    """`args` with each `--config FILE` (or `-c FILE`, `--config=FILE`) that lists parts replaced by its chain."""
    expanded: list[str] = []
    items = list(args)
    index = 0
    while index < len(items):
        item = items[index]
        flag, _, inline = item.partition("=")
        if flag == "--config" and inline:
            value, index = inline, index + 1
        elif item in CONFIG_FLAGS and index + 1 < len(items):
            value, index = items[index + 1], index + 2
        else:
            expanded.append(item)
            index += 1
            continue
        expanded.extend(expanded_config(value) if composes_parts(value) else ["--config", value])
    return expanded


def merge_settings(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base` with jsonargparse's rules for config files: mappings merge key by key, a list or any
    other value replaces the earlier one, and `key+: [...]` appends to the earlier list."""
    merged = dict(base)
    for key, value in update.items():
        if key.endswith("+"):
            name = key[:-1]
            earlier = merged.get(name) or []
            merged[name] = [
                *(earlier if isinstance(earlier, list) else [earlier]),
                *(value if isinstance(value, list) else [value]),
            ]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def composed_settings(path: str | Path) -> dict[str, Any]:
    """The settings a composed config file gives, its parts merged in order, without the defaults the CLI adds.

    Plain YAML, no Lightning: what a test reads to check what a config sets. Unlike jsonargparse it keeps a class's
    earlier `init_args` when a later file names another `class_path`; `--print_config` shows the exact result.
    """
    settings: dict[str, Any] = {}
    for file in config_chain(path):
        settings = merge_settings(settings, {key: value for key, value in read_yaml(file).items() if key != PARTS_KEY})
    return settings
