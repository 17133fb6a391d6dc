"""Foreign nets in mcrobust's conventions: pixels in [0,1] in, logits out.

mcrobust stamps triggers, draws PGD's eps-ball and takes the input Hessian in [0,1] pixel space, and trains and
evaluates with cross-entropy on logits. A net trained elsewhere may expect normalised inputs and may end in a
softmax; `adapt_net` wraps it so that it takes pixels and returns logits, without touching its weights: the
wrapper's state_dict is the net's own under `net.`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from mcrobust.errors import CheckpointError, ConfigError
from mcrobust.nets.layers import CIFAR10_MEAN, CIFAR10_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
}
"""Named input statistics that `normalize` accepts."""

OUTPUTS = ("logits", "probabilities", "log_probabilities")
"""What a foreign net's last layer returns: raw scores, a softmax, or a log-softmax."""

_FORMS = (
    "'imagenet', 'cifar10', 'none', 'MEAN,STD' (one number each, e.g. '0.5,0.5'), "
    "JSON '{\"mean\": [...], \"std\": [...]}' or '[[...], [...]]', or a (mean, std) pair of numbers or lists"
)

Statistics = tuple[tuple[float, ...], tuple[float, ...]]


def parse_normalize(spec: Any) -> Statistics | None:
    """Per-channel (mean, std) from a user's `normalize` setting; None means the net takes [0,1] pixels.

    A single number stands for every channel; a single number beside a list is repeated to its length.

    Args:
        spec: None, a preset name, a 'MEAN,STD' or JSON string, a {'mean', 'std'} mapping or a (mean, std) pair.

    Raises:
        ConfigError: one line naming `normalize` and the accepted forms, or a std that is not positive.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        return _from_string(spec)
    if isinstance(spec, Mapping) and set(spec) == {"mean", "std"}:
        return _statistics(spec["mean"], spec["std"], spec)
    if isinstance(spec, Sequence) and len(spec) == 2:
        return _statistics(spec[0], spec[1], spec)
    raise _bad(spec)


def _from_string(text: str) -> Statistics | None:
    stripped = text.strip()
    if stripped.lower() in ("", "none"):
        return None
    if stripped.lower() in PRESETS:
        return PRESETS[stripped.lower()]
    if stripped[0] in "[{":
        try:
            decoded = json.loads(stripped)
        except json.JSONDecodeError:
            raise _bad(text) from None
        if isinstance(decoded, str):
            raise _bad(text)
        return parse_normalize(decoded)
    parts = stripped.split(",")
    if len(parts) != 2:
        raise _bad(text)
    try:
        mean, std = float(parts[0]), float(parts[1])
    except ValueError:
        raise _bad(text) from None
    return _statistics(mean, std, text)


def _statistics(mean: Any, std: Any, spec: Any) -> Statistics:
    means, stds = _numbers(mean, spec), _numbers(std, spec)
    means = means * len(stds) if len(means) == 1 else means  # one number stands for every channel
    stds = stds * len(means) if len(stds) == 1 else stds
    if len(means) != len(stds):
        raise ConfigError(f"normalize has {len(means)} means but {len(stds)} stds; give one std per mean")
    if not all(math.isfinite(value) for value in means + stds) or min(stds) <= 0:
        raise ConfigError(f"normalize needs finite means and stds > 0, got mean={means}, std={stds}")
    return means, stds


def _numbers(value: Any, spec: Any) -> tuple[float, ...]:
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not items or any(isinstance(item, bool) or not isinstance(item, (int, float)) for item in items):
        raise _bad(spec)
    return tuple(float(item) for item in items)


def _bad(spec: Any) -> ConfigError:
    shown = repr(spec) if len(repr(spec)) <= 80 else repr(spec)[:77] + "..."
    return ConfigError(f"normalize must be {_FORMS}; got {shown}")


class AdaptedNet(nn.Module):
    """A foreign net made to take [0,1] pixels and return logits: x -> (x - mean) / std -> net -> logits.

    A softmax output becomes log(p) (clamped at the smallest positive float), which cross-entropy treats as the
    logits it came from: softmax(log p) = p, so losses and gradients equal those on the pre-softmax scores, and
    a log-softmax output is passed through unchanged for the same reason. mean and std are non-persistent
    buffers, so the state_dict holds exactly the net's tensors under `net.`: a checkpoint of the bare class
    loads (`load_weights` adds the prefix) and `inner_state_dict()` exports it back.

    Args:
        net: the user's network, called on (N, C, ...) batches.
        mean: the per-channel mean the net was trained with (one number: every channel); None: no normalisation.
        std: the per-channel std, > 0, given with `mean`.
        output: what `net` returns: "logits", "probabilities" (a softmax) or "log_probabilities".
    """

    mean: Tensor | None
    std: Tensor | None

    def __init__(
        self,
        net: nn.Module,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        output: str = "logits",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if (mean is None) != (std is None):
            raise ConfigError("normalize needs both mean and std, or neither")
        self.net, self.output = net, output
        statistics = None if mean is None else _statistics(mean, std, (mean, std))
        for name, values in zip(("mean", "std"), statistics or (None, None), strict=True):
            tensor = None if values is None else torch.tensor(values, dtype=torch.float32)
            self.register_buffer(name, tensor, persistent=False)

    def extra_repr(self) -> str:
        if self.mean is None or self.std is None:
            return f"output={self.output!r}"
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}, output={self.output!r}"

    def forward(self, x: Tensor) -> Tensor:
        if self.mean is not None and self.std is not None:
            x = (x - self._per_channel(self.mean, x)) / self._per_channel(self.std, x)
        out = self.net(x)
        if self.output == "probabilities":
            out = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
        return out

    @staticmethod
    def _per_channel(values: Tensor, x: Tensor) -> Tensor:
        if values.numel() != 1 and (x.dim() < 2 or x.shape[1] != values.numel()):
            raise ConfigError(
                f"normalize has {values.numel()} channels but the input has shape {list(x.shape)}; "
                "give one mean and std per input channel"
            )
        return values.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))

    def inner_state_dict(self) -> dict[str, Tensor]:
        """The wrapped net's own state_dict, loadable into the user's bare class."""
        return dict(self.net.state_dict())


def unwrap_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An AdaptedNet's state_dict as the wrapped net's: every key without its `net.` prefix.

    Raises:
        CheckpointError: a key lacks the prefix (the state_dict is not an AdaptedNet's).
    """
    for key in state_dict:
        if not key.startswith("net."):
            raise CheckpointError(f"{key!r} does not start with 'net.'; this is not the state_dict of an AdaptedNet")
    return {key[len("net.") :]: value for key, value in state_dict.items()}


def unwrap_net(net: nn.Module) -> nn.Module:
    """The user's network inside an AdaptedNet (or `net` itself), e.g. to export a point of a path."""
    return cast(nn.Module, net.net) if isinstance(net, AdaptedNet) else net


def adapt_net(net: nn.Module, normalize: Any = None, output: str = "logits") -> nn.Module:
    """`net` made to take [0,1] pixels and return logits; `net` itself when it already does.

    Args:
        net: the user's network.
        normalize: the input statistics it was trained with, in any form `parse_normalize` accepts.
        output: what `net` returns: "logits", "probabilities" or "log_probabilities".
    """
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    statistics = parse_normalize(normalize)
    if statistics is None and output == "logits":
        return net
    mean, std = statistics if statistics is not None else (None, None)
    return AdaptedNet(net, mean, std, output)
