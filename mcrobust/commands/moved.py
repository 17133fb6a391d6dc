"""Where the modules of mcrobust 0.1 went in the one-concept-per-folder layout, so an old config or import path gets
a one-line hint instead of jsonargparse's "cannot import" text."""

from __future__ import annotations

import re

MOVED: dict[str, str] = {
    "mcrobust.attacks": "mcrobust.threats.evasion",
    "mcrobust.injection": "mcrobust.threats.injection",
    "mcrobust.data.poisoning": "mcrobust.threats.triggers",
    "mcrobust.curves": "mcrobust.paths.curves",
    "mcrobust.batchnorm": "mcrobust.paths.batchnorm",
    "mcrobust.selection": "mcrobust.paths.selection",
    "mcrobust.export": "mcrobust.paths.export",
    "mcrobust.evaluation": "mcrobust.analysis.evaluation",
    "mcrobust.hessian": "mcrobust.analysis.hessian",
    "mcrobust.pathstats": "mcrobust.analysis.statistics",
    "mcrobust.plotting": "mcrobust.analysis.plotting",
    "mcrobust.report": "mcrobust.analysis.report",
    "mcrobust.baselines": "mcrobust.defenses.fine_pruning",
    "mcrobust.checkpoints": "mcrobust.io.checkpoints",
    "mcrobust.atomic": "mcrobust.io.files",
    "mcrobust.tables": "mcrobust.io.tables",
    "mcrobust.guards": "mcrobust.io.trust",
    "mcrobust.schedules": "mcrobust.utils.schedules",
    "mcrobust.chain": "mcrobust.pipeline.chain",
    "mcrobust.second_end": "mcrobust.pipeline.second_end",
    "mcrobust.inputs": "mcrobust.pipeline.inputs",
    "mcrobust.systems.classification": "mcrobust.systems.base",
    "mcrobust.systems.pruning": "mcrobust.systems.fine_pruning",
}
"""Old module -> its new home (for a split module, where its public classes went: the triggers of data.poisoning,
the attacks of attacks, the checkpoint checks of guards)."""

SYMBOLS: dict[str, str] = {
    "mcrobust.data.poisoning.poison": "mcrobust.threats.backdoor.poison",
    "mcrobust.data.poisoning.triggered_eval_set": "mcrobust.threats.backdoor.triggered_eval_set",
    "mcrobust.data.poisoning.attack_success_rate": "mcrobust.threats.backdoor.attack_success_rate",
    "mcrobust.attacks.eval_mode": "mcrobust.utils.modes.eval_mode",
    "mcrobust.baselines.noisy_weights": "mcrobust.defenses.noisy.noisy_weights",
}
"""Names of split modules that did not go where the rest of their module went."""

_ALTERNATIVES = "|".join(re.escape(old) for old in sorted(MOVED, key=len, reverse=True))
_OLD_PATH = re.compile(r"\b(" + _ALTERNATIVES + r")(?!\w)(\.\w+)?")


def new_path(dotted: str) -> str:
    """The current spelling of an old dotted path (`mcrobust.attacks.PGD` -> `mcrobust.threats.evasion.PGD`)."""
    if dotted in SYMBOLS:
        return SYMBOLS[dotted]
    match = _OLD_PATH.fullmatch(dotted)
    if match is None:
        return dotted
    return MOVED[match.group(1)] + (match.group(2) or "")


def moved_paths(text: str) -> str:
    """`text` with every old dotted module path spelled as it is now (old configs, old docs)."""
    return _OLD_PATH.sub(lambda match: new_path(match.group(0)), text)


def moved_hint(message: str) -> str | None:
    """A one-line hint when an error message names a module path that moved, else None."""
    match = _OLD_PATH.search(message)
    if match is None:
        return None
    old = match.group(0)
    return f"{old} moved to {new_path(old)} in mcrobust 0.2: update the class_path or import"
