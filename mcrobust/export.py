"""Export one point of a path as a plain model: state_dict (.pt) + .safetensors + the net's config (JSON).

The files load into the bare architecture with `load_state_dict` and no mcrobust code; BN statistics are
recomputed on the bonafide data first, so the exported model is exactly the point that was evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mcrobust.batchnorm import recompute_bn
from mcrobust.checkpoints import save_weights
from mcrobust.curves import CurveModel
from mcrobust.tables import write_json


def net_config(net: Any, hparams_net: Any = None) -> dict[str, Any]:
    """class_path/init_args of the architecture: from the CLI's hyperparameters when present, else the class."""
    if isinstance(hparams_net, Mapping) and "class_path" in hparams_net:
        return {"class_path": hparams_net["class_path"], "init_args": dict(hparams_net.get("init_args", {}))}
    cls = type(net)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {}}


def export_point(
    curve: CurveModel,
    t: float,
    bn_loader: Iterable | None,
    directory: str | Path,
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Materialise the curve at t, recompute its BN statistics on `bn_loader`, and write the three files.

    Returns the paths by kind ('pt', 'safetensors', 'config').
    """
    model = curve.materialize(t)
    if bn_loader is not None:
        recompute_bn(model, bn_loader)
    model.eval()
    stem = name or f"repaired_t{t:.3f}"
    directory = Path(directory)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    paths = {
        "pt": save_weights(state, directory / f"{stem}.pt"),
        "safetensors": save_weights(state, directory / f"{stem}.safetensors"),
    }
    meta = {"t": t, "net": dict(config or net_config(curve.template)), "bn_recomputed": bn_loader is not None}
    paths["config"] = write_json(directory / f"{stem}.json", {**meta, **dict(extra or {})})
    return paths
