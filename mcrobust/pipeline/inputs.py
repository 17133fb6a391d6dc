"""The inputs of a user who was handed a model: the architecture, the weights, labelled images and a trigger.

`mcrobust repair` and `mcrobust.repair()` / `mcrobust.evaluate()` accept them in the forms a user has at hand (an
nn.Module or a checkpoint file; a registered net name, a class path or `torchvision.models.*`; a folder of class
sub-folders, a torch Dataset of (image in [0,1], label) or a pair of tensors; a trigger YAML file) and turn them
into what the rest of mcrobust works with: an nn.Module, `ArraySplit`s of uint8 images, and a `Trigger`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from mcrobust.data.sources import ArraySplit, load_image_folder
from mcrobust.errors import ConfigError, DataError
from mcrobust.io.checkpoints import load_weights
from mcrobust.threats.triggers import Trigger

PathLike = str | os.PathLike[str]
ImagesLike = Dataset | tuple[torch.Tensor, torch.Tensor] | PathLike


def build_net(spec: str | nn.Module, args: dict[str, Any] | str | None = None) -> nn.Module:
    """An architecture instance from a registered name, a class path (`my_pkg.MyNet`) or `torchvision.models.x`.

    Args:
        spec: the name, the dotted path of a class or factory, or an nn.Module (returned as is).
        args: keyword arguments of the constructor, a dict or a JSON object string.
    """
    if isinstance(spec, nn.Module):
        return spec
    kwargs = _net_args(args)
    from mcrobust.nets import create_net, list_nets

    if spec in list_nets():
        return create_net(spec, **kwargs)
    module_name, _, attribute = spec.rpartition(".")
    if not module_name:
        raise ConfigError(f"--net {spec!r} is neither a registered net ({', '.join(list_nets())}) nor a class path")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"--net {spec!r} cannot be imported ({error}); check the module is on PYTHONPATH") from None
    try:
        net = factory(**kwargs)
    except TypeError as error:
        raise ConfigError(f"--net {spec!r} does not accept --net-args {kwargs} ({error})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"--net {spec!r} built a {type(net).__name__}, not an nn.Module")
    return net


def _net_args(args: dict[str, Any] | str | None) -> dict[str, Any]:
    if args is None or isinstance(args, dict):
        return dict(args or {})
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--net-args must be a JSON object such as '{{\"num_classes\": 10}}' ({error})") from None
    if not isinstance(parsed, dict):
        raise ConfigError("--net-args must be a JSON object such as '{\"num_classes\": 10}'")
    return parsed


def as_module(model: nn.Module | PathLike, net: str | nn.Module | None, setting: str = "model") -> nn.Module:
    """The user's model as a fresh nn.Module: a copy of a module, or a checkpoint loaded into `net` (weights only).

    Args:
        model: an nn.Module or a checkpoint path (.pt/.pth/.ckpt/.safetensors, nested layouts accepted).
        net: the architecture to load a checkpoint into (an instance or a spec for :func:`build_net`).
        setting: how errors name the argument.
    """
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    if net is None:
        raise ConfigError(f"{setting} is a checkpoint file; give its architecture with net (--net my_pkg.MyNet)")
    template = copy.deepcopy(build_net(net)) if isinstance(net, nn.Module) else build_net(net)
    template.load_state_dict(load_weights(model, template=template))
    return template


def as_split(images: ImagesLike, setting: str, image_size: int | None = None) -> ArraySplit:
    """Labelled images in memory as uint8 (N, H, W, C): from a class-folder, a Dataset or (images, labels).

    Float images in [0,1] are rounded to 8-bit pixels (the form triggers and the data pipeline work in).

    Args:
        images: a folder with one sub-folder per class, a Dataset of (image (C,H,W) in [0,1], label), or a pair
            of tensors (images N,C,H,W in [0,1], labels N).
        setting: how errors name the argument ('clean', 'eval', 'dataset').
        image_size: resize folder images to this square size.
    """
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(f"{setting} folder {folder} does not exist; give a folder with one sub-folder per class")
        return load_image_folder(folder.parent, folder.name, image_size)
    if isinstance(images, (tuple, list)) and len(images) == 2 and all(isinstance(t, torch.Tensor) for t in images):
        x, y = images
    elif isinstance(images, Dataset):
        x, y = _stack(images, setting)
    else:
        raise ConfigError(f"{setting} must be a folder, a torch Dataset or an (images, labels) pair of tensors")
    return _to_split(x, y, setting)


def _stack(dataset: Dataset, setting: str) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    if not items:
        raise DataError(f"{setting} holds no images")
    try:
        return torch.stack([torch.as_tensor(item[0]) for item in items]), torch.as_tensor([int(i[1]) for i in items])
    except (TypeError, RuntimeError, IndexError) as error:
        raise DataError(f"{setting} items must be (image tensor C,H,W in [0,1], int label) ({error})") from None


def _to_split(x: torch.Tensor, y: torch.Tensor, setting: str) -> ArraySplit:
    if x.dim() != 4 or len(x) != len(y) or not x.is_floating_point():
        raise DataError(f"{setting} images must be float (N, C, H, W) in [0,1] with N labels, got {tuple(x.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise DataError(f"{setting} images must be pixels in [0,1] (normalise inside the model: --normalize)")
    pixels = (x.detach().cpu().float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels = y.detach().cpu().long().numpy()
    classes = tuple(str(c) for c in range(int(labels.max()) + 1))
    return ArraySplit(np.ascontiguousarray(pixels), labels, classes)


def load_trigger(spec: PathLike | dict[str, Any] | Trigger | None) -> tuple[Trigger | None, int | None]:
    """The trigger and target label from a YAML file shaped like `data.poison` (`trigger:` class_path/init_args,
    `target:`), a dict of that shape, or a Trigger object (target then comes separately)."""
    if spec is None or isinstance(spec, Trigger):
        return spec, None  # type: ignore[return-value]
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"--trigger file {path} does not exist")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"--trigger file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(spec, dict) or "trigger" not in spec:
        raise ConfigError("--trigger YAML needs 'trigger: {class_path: ..., init_args: {...}}' and 'target: <label>'")
    return _instantiate(spec["trigger"]), spec.get("target")


def _instantiate(spec: Any) -> Trigger:
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ConfigError("--trigger's 'trigger' needs a class_path (e.g. mcrobust.threats.triggers.PatchTrigger)")
    module_name, _, name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"trigger class {spec['class_path']!r} cannot be imported ({error})") from None
    trigger = cls(**dict(spec.get("init_args") or {}))
    if not isinstance(trigger, Trigger):
        raise ConfigError(f"trigger class {spec['class_path']!r} lacks apply(images) and apply_tensor(x)")
    return trigger


def sha256_of(paths: Sequence[PathLike | None]) -> dict[str, str]:
    """sha256 of each input file (folders: of their sorted file names and contents), for the export's record."""
    digests = {}
    for path in paths:
        if path is None or not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
            continue
        digest = hashlib.sha256()
        files = [Path(path)] if os.path.isfile(path) else sorted(p for p in Path(path).rglob("*") if p.is_file())
        for file in files:
            digest.update(str(file.relative_to(path) if file != Path(path) else file.name).encode())
            digest.update(file.read_bytes())
        digests[os.fspath(path)] = digest.hexdigest()
    return digests


def inputs_fingerprint(models: list[nn.Module], clean: ArraySplit) -> str:
    """sha256 of the given models' weights and buffers and of the clean images and labels: what a repair was of."""
    digest = hashlib.sha256()
    for model in models:
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(np.ascontiguousarray(clean.images).tobytes())
    digest.update(np.ascontiguousarray(clean.labels).tobytes())
    return digest.hexdigest()
