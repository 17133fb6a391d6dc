"""Tables of the one-model study (scripts/one_model_study.py): recipes x choice rules x warning signals.

    .venv/bin/python scripts/one_model_tables.py lightning_logs/one_model_study/study.json [more.json ...]

One file rewrites its Markdown; several are merged into combined.md beside the first.

Every rule below chooses t from the clean holdout only; "oracle" (the cleanest point whose ASR <= 0.1) reads the
trigger and is a reference, never a rule a defender could run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcrobust.io.tables import markdown_table  # noqa: E402
from mcrobust.paths.selection import select_t  # noqa: E402

REMOVED_ASR = 0.10
"""A repair removed the backdoor when the ASR at its exported point is at most this (issue 14)."""
CLEAN_POINTS = 0.03
"""... and kept its clean accuracy when it lost at most this much against the tampered model."""
HOLDOUT = 30
"""Holdout images of every repair (10% of the 300 clean images)."""
SIGNALS = ("relative_weight_distance", "changed_predictions", "logit_agreement")

Rule = Callable[[list[dict[str, Any]]], float]


def _select(target: float, tolerance: float | None = None) -> Rule:
    return lambda rows: select_t(rows, tolerance=tolerance, target=target, count=HOLDOUT).t


def _oracle(rows: list[dict[str, Any]]) -> float:
    clean = [row for row in rows if row["t"] > 0 and row["asr"] <= REMOVED_ASR]
    return max(clean, key=lambda row: (row["clean_acc"], -row["t"]))["t"] if clean else 1.0


RULES: dict[str, Rule] = {
    "middle": _select(0.5),  # the paper's: closest to 0.5 within one standard error of the best holdout accuracy
    "far": _select(1.0),  # farthest from the tampered model within the same tolerance
    "far-best": _select(1.0, 0.0),  # farthest point that reaches the best interior holdout accuracy
    "end": lambda rows: 1.0,  # the second end alone: the purification baseline of the recipe
    "oracle": _oracle,
}


def row_at(run: dict[str, Any], t: float) -> dict[str, Any]:
    """The path row of `run` at t."""
    return next(row for row in run["rows"] if abs(row["t"] - t) < 1e-9)


def outcome(study: dict[str, Any], run: dict[str, Any], t: float) -> dict[str, Any]:
    """Clean accuracy, ASR, the clean drop against the model and success flags of `run` exported at t."""
    row, model = row_at(run, t), study["models"][run["model"]]
    drop = model["clean_acc"] - row["clean_acc"]
    removed = row["asr"] <= REMOVED_ASR
    return {
        "t": t,
        "clean_acc": row["clean_acc"],
        "asr": row["asr"],
        "drop": drop,
        "removed": removed,
        "success": removed and drop <= CLEAN_POINTS + 1e-9,
    }


def runs_table(study: dict[str, Any]) -> str:
    """One line per repair: the model, the recipe, each rule's t / clean / ASR, the seconds."""
    lines = []
    for run in study["runs"]:
        model = study["models"][run["model"]]
        line = {"model": run["model"], "recipe": run["recipe"]}
        line["tampered"] = f"{model['clean_acc']:.3f} / {model['asr']:.3f}"
        for name, rule in RULES.items():
            result = outcome(study, run, rule(run["rows"]))
            line[name] = f"{result['t']:.1f}: {result['clean_acc']:.3f} / {result['asr']:.3f}"
        line["s"] = f"{run['seconds']:.0f}"
        lines.append(line)
    return markdown_table(lines, ["model", "recipe", "tampered", *RULES, "s"])


def rules_table(study: dict[str, Any]) -> str:
    """Per recipe and rule: repairs that removed the backdoor, and that also kept clean accuracy within 3 points."""
    recipes = list(dict.fromkeys(run["recipe"] for run in study["runs"]))
    lines = []
    for recipe in recipes:
        runs = [run for run in study["runs"] if run["recipe"] == recipe]
        line: dict[str, Any] = {"recipe": recipe, "n": len(runs)}
        for name, rule in RULES.items():
            results = [outcome(study, run, rule(run["rows"])) for run in runs]
            removed = sum(r["removed"] for r in results)
            success = sum(r["success"] for r in results)
            mean_drop = sum(r["drop"] for r in results) / len(results)
            line[name] = f"{removed} / {success} (drop {100 * mean_drop:.1f})"
        lines.append(line)
    return markdown_table(lines, ["recipe", "n", *RULES])


def path_tables(study: dict[str, Any]) -> str:
    """ASR and clean accuracy at every t, one pair of lines per repair."""
    ts = [row["t"] for row in study["runs"][0]["rows"]]
    lines = []
    for run in study["runs"]:
        for key in ("asr", "clean_acc", "holdout_acc", "relative_weight_distance"):
            line = {"repair": f"{run['model']} {run['recipe']}", "metric": key}
            line |= {f"{t:.1f}": f"{row_at(run, t)[key]:.2f}" for t in ts}
            lines.append(line)
    return markdown_table(lines, ["repair", "metric", *[f"{t:.1f}" for t in ts]])


def points(study: dict[str, Any], rule_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The exported points of every repair under the given rules (interior t only), with their signals and ASR."""
    chosen = {}
    for run in study["runs"]:
        for name in rule_names:
            t = RULES[name](run["rows"])
            chosen[(run["model"], run["recipe"], t)] = row_at(run, t)
    return [row for (model, recipe, t), row in chosen.items() if 0 < t < 1]


def best_threshold(rows: list[dict[str, Any]], signal: str) -> tuple[float, bool, int]:
    """The threshold of `signal` that best separates removed (ASR <= 0.1) from kept backdoors; errors made.

    Returns (threshold, warn_below, errors): warn when the value is below (or above) the threshold.
    """
    values = sorted({row[signal] for row in rows})
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)] or values
    best = (0.0, True, len(rows) + 1)
    for cut in cuts:
        for below in (True, False):
            warned = [(row[signal] < cut) == below for row in rows]
            errors = sum(w == (row["asr"] <= REMOVED_ASR) for w, row in zip(warned, rows, strict=True))
            if errors < best[2]:
                best = (cut, below, errors)
    return best


def signal_table(rows: list[dict[str, Any]]) -> str:
    """For each signal: the best single threshold and the errors it makes on these points."""
    lines = []
    for signal in SIGNALS:
        cut, below, errors = best_threshold(rows, signal)
        kept = [row[signal] for row in rows if row["asr"] > REMOVED_ASR]
        removed = [row[signal] for row in rows if row["asr"] <= REMOVED_ASR]
        lines.append(
            {
                "signal": signal,
                "removed (ASR <= 0.1): range": f"{min(removed, default=0):.3f} .. {max(removed, default=0):.3f}",
                "kept: range": f"{min(kept, default=0):.3f} .. {max(kept, default=0):.3f}",
                "best rule": f"warn if {'<' if below else '>'} {cut:.3f}",
                "errors": f"{errors} / {len(rows)}",
            }
        )
    return markdown_table(lines, ["signal", "removed (ASR <= 0.1): range", "kept: range", "best rule", "errors"])


def confusion(rows: list[dict[str, Any]], warn: Callable[[dict[str, Any]], bool]) -> str:
    """2x2 table: warned or not against backdoor removed or kept."""
    cells = {(w, k): 0 for w in (True, False) for k in (True, False)}
    for row in rows:
        cells[(warn(row), row["asr"] > REMOVED_ASR)] += 1
    lines = [
        {"": "warned", "backdoor kept (ASR > 0.1)": cells[(True, True)], "removed": cells[(True, False)]},
        {"": "not warned", "backdoor kept (ASR > 0.1)": cells[(False, True)], "removed": cells[(False, False)]},
    ]
    return markdown_table(lines, ["", "backdoor kept (ASR > 0.1)", "removed"])


def models_table(study: dict[str, Any]) -> str:
    lines = [
        {
            "model": name,
            "trigger": m["trigger"],
            "rate": m["rate"],
            "seed": m["seed"],
            "clean_acc": m["clean_acc"],
            "asr": m["asr"],
            "train s": m["seconds"],
        }
        for name, m in study["models"].items()
    ]
    return markdown_table(lines, ["model", "trigger", "rate", "seed", "clean_acc", "asr", "train s"])


def write_tables(study: dict[str, Any], path: Path) -> str:
    """All tables of the study as Markdown, written to `path` (and returned)."""
    from mcrobust.api import NEAR_TAMPERED, near_tampered
    from mcrobust.pipeline.settings import ChainSettings

    settings = ChainSettings()
    settings.resolve_for(one_model=True)
    rule = settings.selection  # 'auto' names no rule of its own; with one model it resolves to a scan rule
    chosen = points(study, ("middle", "far"))
    # the scan rules need the scans, not only the rows: their points are the ones each repair exported
    default = [row_at(run, run["chosen_t"]) for run in study["runs"] if 0 < run["chosen_t"] < 1]
    every = [row for run in study["runs"] for row in run["rows"] if 0 < row["t"] < 1]
    text = "\n\n".join(
        [
            f"One-model study: {len(study['runs'])} repairs, {study['seconds']:.0f} s at 1 thread; "
            f"budget {study['budget']}; clean images {'inside' if study.get('overlap') else 'outside'} the attacker's "
            "training set.",
            "## Tampered models\n\n" + models_table(study),
            "## Each repair: t / clean accuracy / ASR by rule\n\n" + runs_table(study),
            "## Rules per recipe: removed (ASR <= 0.1) / also within 3 clean points (mean clean drop, points)\n\n"
            + rules_table(study),
            f"## Warning signals at the points the rules export ({len(chosen)} interior points)\n\n"
            + signal_table(chosen),
            f"## Warning signals at every interior point of every path ({len(every)} points)\n\n" + signal_table(every),
            f"## mcrobust's warning rule {NEAR_TAMPERED} at the points the repairs exported (the default rule with "
            f"one model: '{rule}') ({len(default)})\n\n" + confusion(default, near_tampered),
            "## The same rule at the points either rule exports\n\n" + confusion(chosen, near_tampered),
            "## The same rule at every interior point\n\n" + confusion(every, near_tampered),
            "## Every path\n\n" + path_tables(study),
        ]
    )
    path.write_text(text + "\n")
    return text


def merged(studies: list[dict[str, Any]]) -> dict[str, Any]:
    """Several studies of the same models as one (their repairs together, e.g. for the warning signals)."""
    first = studies[0]
    models = {name: model for study in studies for name, model in study["models"].items()}
    for study in studies:  # a study that reused the trained models did not time their training
        for name, model in study["models"].items():
            models[name] = {**model, "seconds": max(model["seconds"], models[name]["seconds"])}
    runs = [run for study in studies for run in study["runs"]]
    return {**first, "models": models, "runs": runs, "seconds": sum(study["seconds"] for study in studies)}


if __name__ == "__main__":
    sources = [Path(arg) for arg in sys.argv[1:]] or [Path("lightning_logs/one_model_study/study.json")]
    study = merged([json.loads(source.read_text()) for source in sources])
    target = sources[0].with_suffix(".md") if len(sources) == 1 else sources[0].with_name("combined.md")
    print(write_tables(study, target))
