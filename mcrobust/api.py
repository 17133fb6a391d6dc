"""The Python entry points for a model you were handed: `mcrobust.evaluate()` and `mcrobust.repair()`.

    import mcrobust
    report = mcrobust.evaluate("suspicious.pt", "clean_images/", net="my_pkg.MyNet", trigger="trigger.yaml")
    result = mcrobust.repair("suspicious.pt", "clean_images/", net="my_pkg.MyNet", epochs=20)
    result.model, result.t, result.table
    result.save("repaired/")

`mcrobust repair` (the command) calls `repair()`: one implementation, one process.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mcrobust.data.transforms import ArrayDataset
from mcrobust.errors import ConfigError
from mcrobust.nets.adapters import adapt_net, unwrap_net
from mcrobust.pipeline.inputs import (
    ImagesLike,
    PathLike,
    as_module,
    as_split,
    inputs_fingerprint,
    load_trigger,
    sha256_of,
)
from mcrobust.threats.backdoor import triggered_eval_set
from mcrobust.threats.triggers import Trigger
from mcrobust.utils.modes import device_of

__all__ = ["RepairResult", "evaluate", "repair"]

DELIVERABLES = (
    "path_metrics.csv",
    "path_summary.json",
    "path_figure.png",
    "repaired.safetensors",
    "repaired.pt",
    "repaired.json",
)
"""The files `mcrobust repair --out` leaves in the output folder besides `steps/` and `lightning_logs/`."""


def _trigger_and_target(trigger: Any, target: int | None) -> tuple[Trigger | None, int | None]:
    found, file_target = load_trigger(trigger)
    target = file_target if target is None else target
    if found is not None and target is None:
        raise ConfigError("a trigger needs its target label: pass target=... (or 'target:' in the trigger YAML)")
    return found, target


def evaluate(
    model: nn.Module | PathLike,
    dataset: ImagesLike,
    net: str | nn.Module | None = None,
    trigger: Any = None,
    target: int | None = None,
    normalize: Any = None,
    output: str = "logits",
    batch_size: int = 256,
) -> dict[str, float]:
    """Clean accuracy and, with a trigger, attack success rate and robust accuracy on triggered images.

    Args:
        model: an nn.Module or a checkpoint file (then `net` is its architecture).
        dataset: labelled clean images: a class-folder, a Dataset of (image in [0,1], label) or (images, labels).
        net: the architecture: an instance, a registered name, a class path or `torchvision.models.*`.
        trigger: a trigger YAML file shaped like `data.poison`, a dict of that shape, or a Trigger object.
        target: the trigger's target label (overrides the YAML's).
        normalize: the input statistics the model expects ((mean, std), "imagenet", "0.5,0.5"); None: pixels.
        output: what the model returns: "logits", "probabilities" or "log_probabilities".
        batch_size: evaluation batch size.

    Returns:
        {"clean_acc", "n"} and, with a trigger, {"asr", "ra", "n_triggered"}: ASR and RA over the non-target
        images with the trigger (RA: classified as their true class).
    """
    from mcrobust.analysis.evaluation import PointEvaluator

    network = adapt_net(as_module(model, net), normalize, output).eval()
    split = as_split(dataset, "dataset")
    found, target = _trigger_and_target(trigger, target)
    sets: dict[str, Any] = {"clean": DataLoader(ArrayDataset(split.images, split.labels), batch_size=batch_size)}
    if found is not None:
        images, labels, source = triggered_eval_set(split.images, split.labels, found, int(target))  # type: ignore[arg-type]
        triggered = ArrayDataset(images, labels, indices=source, true_labels=split.labels[source])
        sets["triggered"] = DataLoader(triggered, batch_size=batch_size)
    device = device_of(network)
    row = PointEvaluator().evaluate(network, sets, device=device, sync=False)
    report = {"clean_acc": row["clean_acc"], "n": len(split.labels)}
    if found is not None:
        report |= {"asr": row["asr"], "ra": row.get("ra", float("nan")), "n_triggered": len(sets["triggered"].dataset)}
    return report


@dataclass
class RepairResult:
    """What a repair produced: the repaired model of the user's class, the chosen t and the path table.

    Attributes:
        model: the point at `t` (BN recomputed on the bonafide data), an instance of the user's class.
        t: the chosen point, picked on clean holdout data only.
        table: one row per evaluated t (clean_acc, holdout_acc, and asr/ra with a trigger).
        summary: the path summary (selection rule, barriers, settings).
        record: what `repaired.json` holds (t, metrics at t, input hashes, seed, versions, warnings).
        folder: where the chain wrote its files.
    """

    model: nn.Module
    t: float
    table: list[dict[str, Any]]
    summary: dict[str, Any]
    record: dict[str, Any]
    folder: Path
    warnings: list[str] = field(default_factory=list)

    def save(self, directory: str | Path) -> Path:
        """Copy the files `mcrobust repair --out` writes to `directory` (created; existing files replaced)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        if target.resolve() != self.folder.resolve():
            for name in DELIVERABLES:
                if (self.folder / name).is_file():
                    shutil.copy2(self.folder / name, target / name)
        return target


def repair(
    model: nn.Module | PathLike,
    clean: ImagesLike,
    second: nn.Module | PathLike | None = None,
    net: str | nn.Module | None = None,
    trigger: Any = None,
    target: int | None = None,
    eval: ImagesLike | None = None,  # noqa: A002 - the name the command line uses (--eval)
    normalize: Any = None,
    output: str = "logits",
    epochs: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    image_size: int | None = None,
    **settings: Any,
) -> RepairResult:
    """Repair a (possibly) tampered model with a path in weight space trained on clean data only.

    One model: a second end is trained from it on the bonafide-train part of `clean` (`second_end`: by default
    adversarial unlearning, fine-tuning that also trains against the batch's universal perturbation and the targeted
    one toward the class it reaches most easily; 'finetune' is the paper's protocol, which leaves backdoors in place,
    docs/one_model.md) and the path joins the two; two models: the path joins them, and by default every point of it
    also learns their mean predictions on the clean images (`path_distill` 'auto': weight 4 with two models, 0 with
    one; docs/results.md). Every t is evaluated, and t is
    chosen without the trigger: with one model, the paper's middle point among those the clean holdout accepts, or
    the next accepted point away from the model where a scan of universal perturbations no longer finds the model's
    suspect class (`selection` 'veto'; 'scan' lets the scan move toward the model as well, which failed on held-out
    CIFAR-10 cells); with two, the paper's point closest to 0.5 among those within the holdout's tolerance of the
    best ('middle'; 'far' forces the farthest).
    The point is exported, and a warning is recorded when the scan cleared no point (or, without a scan, when the
    point stayed so close to the model that a backdoor probably survived).

    Args:
        model: the suspicious model, an nn.Module or a checkpoint file (then `net` is its architecture).
        clean: clean labelled images (a class-folder, a Dataset or (images, labels)); split into
            bonafide-train and holdout (seeded, stratified).
        second: a second model of the same architecture (two-model protocol).
        net: the architecture: an instance, a registered name, a class path or `torchvision.models.*`.
        trigger: a trigger (YAML file, dict or Trigger) for reporting ASR and RA; the repair never uses it.
        target: the trigger's target label (overrides the YAML's).
        eval: separate labelled images for the reported metrics (default: the holdout).
        normalize: the input statistics the model expects ((mean, std), "imagenet", "0.5,0.5"); None: pixels.
        output: what the model returns: "logits", "probabilities" or "log_probabilities".
        epochs: epochs of each training stage (default: the paper's 100).
        seed: seed of the split, training and evaluation.
        out: output folder (default: a new temporary folder); a killed run resumes there.
        image_size: resize folder images to this square size.
        **settings: any field of `mcrobust.pipeline.settings.ChainSettings` (second_end, selection, epoch_samples,
            batch_size, num_points, ...).
    """
    from mcrobust.analysis.distance import distance_signals
    from mcrobust.pipeline.chain import RepairChain, muted_start_up_notes, repair_data
    from mcrobust.pipeline.scan import resolve_radius, scan_selection
    from mcrobust.pipeline.settings import SCANNED, ChainSettings

    with muted_start_up_notes():  # Lightning's start-up notes, restored afterwards
        if epochs is not None:
            settings["epochs"] = epochs
        chain_settings = ChainSettings(seed=seed, **settings)
        chain_settings.resolve_for(one_model=second is None)
        first = adapt_net(as_module(model, net), normalize, output)
        other = adapt_net(as_module(second, net, "second"), normalize, output) if second is not None else None
        found, target = _trigger_and_target(trigger, target)
        evaluation_split = as_split(eval, "eval", image_size) if eval is not None else None
        clean_split = as_split(clean, "clean", image_size)
        data = repair_data(clean_split, evaluation_split, chain_settings, found, target)
        folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="mcrobust-repair-"))
        chain = RepairChain(_template(first), data, chain_settings, folder)
        given = [first] if other is None else [first, other]
        chain.check_resumable("two" if other is not None else "one", inputs_fingerprint(given, clean_split))
        start = chain.save_endpoint("model", first)
        if other is None and (chain_settings.second_end == "unlearn" or chain_settings.selection in SCANNED):
            chain_settings.unlearn_eps = resolve_radius(chain, first)  # 'auto' was what the resume check compared
        end = chain.save_endpoint("second", other) if other is not None else chain.second_end(start)
        system, evaluation = chain.evaluate(chain.train_path(start, end))
        t = evaluation.summary.get("selected_t")
        if t is None:
            raise ConfigError("no t could be chosen: the clean holdout is empty")
        cleared = None
        if chain_settings.selection in SCANNED:
            t, _, cleared = scan_selection(chain, system, evaluation)
        point = chain.point(system, t)
        signals = distance_signals(first.cpu(), point, data.eval_dataloader(data.bonafide_dataset("holdout")))
        record = _record(t, evaluation.rows, chain_settings, signals, [model, second, clean, eval, trigger], cleared)
        _export(point, folder, record)
        warnings = record["warnings"]
        return RepairResult(unwrap_net(point), t, evaluation.rows, evaluation.summary, record, folder, warnings)


def _template(network: nn.Module) -> nn.Module:
    """A copy of the architecture for the curve (its weights are replaced by the endpoints')."""
    import copy

    return copy.deepcopy(network).cpu()


NEAR_TAMPERED = {"relative_weight_distance": 0.2}
"""Below this relative weight distance from the given model the exported point probably kept its backdoor.

Of the three distance signals only the weight distance separated removed from kept backdoors in the one-model study
(docs/one_model.md): holdout predictions barely change either way, and logit agreement overlaps.
"""


def near_tampered(signals: dict[str, float]) -> bool:
    """Whether the exported point sits so close to the given model that a backdoor it carried probably stayed."""
    return signals["relative_weight_distance"] < NEAR_TAMPERED["relative_weight_distance"]


def _record(
    t: float,
    rows: Sequence[dict[str, Any]],
    settings: Any,
    signals: dict[str, float],
    inputs: list[Any],
    cleared: bool | None = None,
) -> dict[str, Any]:
    """repaired.json: the chosen t, its metrics, the distance signals, input hashes, seed and versions.

    `cleared`: None without a suspect scan (the weight-distance rule warns), else whether the scan cleared a point.
    """
    import pytorch_lightning

    row = next(r for r in rows if abs(r["t"] - t) < 1e-9)
    warnings = []
    if cleared is None and near_tampered(signals):  # with a suspect scan the scan's verdict replaces this guess
        warnings.append(
            "probably not removed: the exported point barely differs from the given model "
            f"(relative weight distance {signals['relative_weight_distance']:.3f} < "
            f"{NEAR_TAMPERED['relative_weight_distance']}, {signals['changed_predictions']:.1%} of holdout predictions "
            f"changed); a backdoor it carried is likely still there - {_next_try(settings)}"
        )
    if cleared is False:
        warnings.append(
            f"probably not removed: at every point the holdout accepts, the suspect scan still finds class "
            f"{row.get('scan_suspect')} reached far more easily than the others (a backdoor's signature); the far "
            f"point was exported - {_next_try(settings)}"
        )
    paths = [str(p) for p in inputs if isinstance(p, (str, Path))]
    return {
        "t": t,
        "metrics": {key: value for key, value in row.items() if key != "t"},
        "distance_from_model": signals,
        "warnings": warnings,
        "inputs_sha256": sha256_of(paths),
        "seed": settings.seed,
        "settings": {key: getattr(settings, key) for key in settings.__dataclass_fields__},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytorch_lightning": pytorch_lightning.__version__,
            "mcrobust": __import__("mcrobust").__version__,
        },
    }


def _next_try(settings: Any) -> str:
    """What to try after a repair that stayed near the model: what the one-model study and the CIFAR-10 row found."""
    if settings.second_end != "unlearn":
        return "try second_end='unlearn' (--second-end) or a second, independently trained model (--second)"
    if not settings.unlearn_suspect:
        return (
            "try unlearn_suspect=True (--unlearn-suspect), more epochs (--epochs), or a second, independently trained "
            "model (--second)"
        )
    return "try more epochs (--epochs), second_end='fst' (--second-end fst), or a second model (--second)"


def _export(point: nn.Module, folder: Path, record: dict[str, Any]) -> None:
    """repaired.pt / .safetensors (a plain state_dict of the user's class) and repaired.json."""
    from mcrobust.io.tables import write_json
    from mcrobust.paths.export import write_point_weights

    write_point_weights(point, folder, "repaired")
    write_json(folder / "repaired.json", json.loads(json.dumps(record, default=_plain)))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    return str(value)
