"""Export one point of a path as a plain model: state_dict (.pt) + .safetensors + the net's config (JSON).

The files load into the bare architecture with `load_state_dict` and no mcrobust code; BN statistics are
recomputed on the bonafide data first, so the exported model is exactly the point that was evaluated. Both weight
files hold the same bytes on a same-seed rerun (the .pt is serialised in memory, not under a temporary name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from mcrobust.io.files import atomic_torch_save, atomic_write_bytes
from mcrobust.io.tables import write_json
from mcrobust.nets.adapters import unwrap_net
from mcrobust.paths.batchnorm import recompute_bn
from mcrobust.paths.curves import CurveModel

METADATA = {"format": "pt"}
"""The .safetensors header metadata `safetensors.torch.save_file` writes for torch tensors."""


def net_config(net: Any, hparams_net: Any = None) -> dict[str, Any]:
    """class_path/init_args of the architecture: from the CLI's hyperparameters when present, else the class."""
    if isinstance(hparams_net, Mapping) and "class_path" in hparams_net:
        return {"class_path": hparams_net["class_path"], "init_args": dict(hparams_net.get("init_args", {}))}
    cls = type(net)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {}}


def write_point_weights(model: nn.Module, directory: str | Path, stem: str) -> dict[str, Path]:
    """`<stem>.pt` and `<stem>.safetensors`: the plain state_dict of the user's class (any adapter removed).

    Both are serialised in memory and written atomically, so a same-seed rerun gives the same bytes.
    """
    directory = Path(directory)
    # contiguous copies of their own: safetensors stores no views or shared storage, and a view into a larger
    # storage would write all of it
    state = {
        key: value.detach().cpu().clone(memory_format=torch.contiguous_format)
        for key, value in unwrap_net(model).state_dict().items()  # a foreign net's own keys, without the adapter
    }
    return {
        "pt": atomic_torch_save(state, directory / f"{stem}.pt"),
        "safetensors": atomic_write_bytes(directory / f"{stem}.safetensors", safetensors_bytes(state, METADATA)),
    }


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
    paths = write_point_weights(model, directory, stem)
    meta = {"t": t, "net": dict(config or net_config(curve.template)), "bn_recomputed": bn_loader is not None}
    paths["config"] = write_json(directory / f"{stem}.json", {**meta, **dict(extra or {})})
    return paths
