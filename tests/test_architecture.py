"""The package's import graph keeps its layers (docs/architecture.md): nothing imports upward, the pure-torch floor
never imports Lightning, and no private helper is imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcrobust"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "utils"),
    ("io",),
    (
        "nets",
        "data",
        "data.sources",
        "data.bonafide",
        "data.subsets",
        "data.transforms",
        "data.samplers",
        "data.batched",
    ),
    ("threats", "paths"),
    ("analysis", "defenses"),
    ("data.datamodules", "data.poisoned"),
    ("systems",),
    ("callbacks",),
    ("pipeline",),
    ("api", "cli", "commands", "testing", "__main__", ""),
)
"""Layers from the bottom up, by module path below `mcrobust` (a package name covers its modules)."""

LIGHTNING_SIDE = ("data.datamodules", "systems", "callbacks", "pipeline", "api", "cli", "testing")
"""Where Lightning may be imported; everything else is the pure-torch floor."""

LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


def module_name(path: Path) -> str:
    """'threats.evasion' for mcrobust/threats/evasion.py, 'threats' for its __init__.py, '' for the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def covers(prefix: str, module: str) -> bool:
    return module == prefix or (prefix != "" and module.startswith(prefix + "."))


def layer_of(module: str) -> int:
    """The layer of the longest prefix that covers `module` (data.datamodules sits above data)."""
    matches = [(len(prefix), index) for index, layer in enumerate(LAYERS) for prefix in layer if covers(prefix, module)]
    assert matches, f"mcrobust.{module} is in no layer of tests/test_architecture.py: place it"
    return max(matches)[1]


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every (module, names) imported anywhere in the file, lazy imports inside functions included."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))
IDS = [module_name(path) or "mcrobust" for path in MODULES]


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_no_module_imports_a_layer_above_it(path: Path) -> None:
    here = module_name(path)
    upward = []
    for imported, names in imports(path):
        if imported != "mcrobust" and not imported.startswith("mcrobust."):
            continue
        targets = [imported.removeprefix("mcrobust").lstrip(".")]
        if imported == "mcrobust":  # `from mcrobust import x`: x is a module or a lazy re-export of the top level
            targets = [name if (PACKAGE / name).exists() or (PACKAGE / f"{name}.py").exists() else "" for name in names]
        upward += [target for target in targets if layer_of(target) > layer_of(here)]
    assert not upward, f"mcrobust.{here} (layer {layer_of(here)}) imports upward: {sorted(set(upward))}"


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_the_floor_never_imports_lightning(path: Path) -> None:
    here = module_name(path)
    if any(covers(prefix, here) for prefix in LIGHTNING_SIDE) or here == "":
        return
    lightning = [module for module, _ in imports(path) if module.split(".")[0] in LIGHTNING]
    assert not lightning, f"mcrobust.{here} is pure torch but imports {lightning}"


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_no_private_name_is_imported_across_modules(path: Path) -> None:
    private = [
        f"{module}.{name}"
        for module, names in imports(path)
        if module.startswith("mcrobust")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, f"mcrobust.{module_name(path)} imports private names {private}"


def test_the_layer_rule_catches_an_upward_import() -> None:
    """The checker itself: a floor module importing a system is an upward edge, the reverse is not."""
    assert layer_of("paths.curves") < layer_of("systems.curve")
    assert layer_of("data.datamodules") > layer_of("data.sources")
    assert layer_of("threats.backdoor") > layer_of("data.bonafide")
