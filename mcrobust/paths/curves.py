"""Curves of networks between two endpoints, for any architecture (Garipov et al. 2018).

A `CurveModel` holds `num_bends` copies ("bends") of every parameter of a template network and runs the
template with the weights w(t) = sum_j c_j(t) theta_j through `torch.func.functional_call`, so no layer
needs a curve-specific class. Zhao et al. (ICLR 2020) train such a path between two tampered networks
on a little clean data and find points in the middle that keep accuracy but lose the tampering.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from typing import cast

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mcrobust.errors import ConfigError
from mcrobust.io.checkpoints import match_state_dict

Scalar = float | Tensor


def _check_t(t: Scalar) -> float:
    if isinstance(t, Tensor):
        if t.numel() != 1:
            raise ConfigError(f"t must be a single number in [0, 1], got a tensor of shape {list(t.shape)}")
        t = t.item()
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"t must be in [0, 1], got {t}")
    return t


def _check_num_bends(num_bends: int) -> None:
    if num_bends < 2:
        raise ConfigError(f"num_bends must be at least 2 (the two endpoints), got {num_bends}")


def _bezier_list(t: float, num_bends: int) -> list[float]:
    degree = num_bends - 1
    return [math.comb(degree, i) * t**i * (1.0 - t) ** (degree - i) for i in range(num_bends)]


def _polychain_list(t: float, num_bends: int) -> list[float]:
    return [max(0.0, 1.0 - abs(t * (num_bends - 1) - i)) for i in range(num_bends)]


def bezier(t: Scalar, num_bends: int) -> Tensor:
    """Bernstein coefficients C(n-1, i) t^i (1-t)^(n-1-i) of a Bezier curve (Garipov et al. 2018, Sec. 3.2).

    Args:
        t: position on the curve in [0, 1].
        num_bends: number of control points n, the endpoints included.
    """
    _check_num_bends(num_bends)
    return torch.tensor(_bezier_list(_check_t(t), num_bends))


def polychain(t: Scalar, num_bends: int) -> Tensor:
    """Coefficients max(0, 1 - |t(n-1) - i|) of a polygonal chain through the bends (Garipov et al. 2018).

    Args:
        t: position on the curve in [0, 1].
        num_bends: number of control points n, the endpoints included.
    """
    _check_num_bends(num_bends)
    return torch.tensor(_polychain_list(_check_t(t), num_bends))


COEFFICIENTS: dict[str, Callable[[float, int], list[float]]] = {"bezier": _bezier_list, "polychain": _polychain_list}


def escape(name: str) -> str:
    """A parameter name as a bend key, which may not contain '.': 'features.0.weight' -> 'features-0-weight'."""
    return name.replace(".", "-")


class _Buffers(nn.Module):
    """One endpoint's own buffers (BN running statistics), kept so a curve checkpoint is self-contained."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(escape(name), tensor.detach().clone())


class CurveModel(nn.Module):
    """A curve of networks w(t) between two endpoints, for any `nn.Module` template (Garipov et al. 2018).

    Storage: `bends[j]` is an `nn.ParameterDict` holding bend j of every (deduplicated) template parameter
    under its escaped name, so keys read `bends.1.features-0-weight`. Fixed endpoints are frozen
    `nn.Parameter`s, never buffers, because DDP re-broadcasts buffers from rank 0 on every forward; the
    template's own parameters are frozen too, so the trainable parameters are exactly the free bends.
    BN running statistics stay buffers of the template, shared by every t and updated in train mode;
    `endpoint_buffers[0 | 1]` keep each endpoint's own buffers (a few kB) for `endpoint()`, so a curve
    checkpoint resumes without the endpoint files. The template's parameters (`template.*`) hold endpoint A
    and are never read by `forward`; `materialize(t)` gives a plain module to export.

    Args:
        template: the architecture; taken over (its parameters are frozen), its values are irrelevant.
        kind: "bezier" or "polychain".
        num_bends: control points including both endpoints; 2 is the straight segment.
        fix_start: keep bend 0 (endpoint A) fixed.
        fix_end: keep the last bend (endpoint B) fixed.
    """

    def __init__(
        self,
        template: nn.Module,
        kind: str = "bezier",
        num_bends: int = 3,
        fix_start: bool = True,
        fix_end: bool = True,
    ) -> None:
        super().__init__()
        if kind not in COEFFICIENTS:
            raise ConfigError(f"curve kind must be one of {sorted(COEFFICIENTS)}, got {kind!r}")
        _check_num_bends(num_bends)
        self.kind, self.num_bends, self.fix_start, self.fix_end = kind, num_bends, fix_start, fix_end
        self._coefficients = COEFFICIENTS[kind]
        self.template = template.requires_grad_(False)
        parameters = dict(template.named_parameters())  # tied tensors appear once
        self.parameter_names = list(parameters)
        self._keys = [escape(name) for name in parameters]
        if len(set(self._keys)) != len(parameters):
            raise ConfigError("two parameter names of the template differ only in '.' versus '-'; rename one")
        canonical = {id(value): name for name, value in parameters.items()}
        # functional_call runs with tie_weights=False: every alias of a tied tensor is fed the same w(t)
        self._aliases = [
            (name, canonical[id(value)])
            for name, value in template.named_parameters(remove_duplicate=False)
            if name not in parameters
        ]
        # where each buffer lives, read on every call so that .to() and load_state_dict are seen
        self._buffer_slots = [
            (name, template.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
            for name, _ in template.named_buffers(remove_duplicate=False)
        ]
        persistent = template.state_dict().keys()
        self.buffer_names = [name for name, _ in template.named_buffers() if name in persistent]
        if len({escape(name) for name in self.buffer_names}) != len(self.buffer_names):
            raise ConfigError("two buffer names of the template differ only in '.' versus '-'; rename one")
        frozen = {0: fix_start, num_bends - 1: fix_end}
        self._fixed_first = sorted(range(num_bends), key=lambda j: not frozen.get(j, False))
        self.bends = nn.ModuleList(
            nn.ParameterDict(  # from pairs: ParameterDict sorts the keys of a plain dict
                [
                    (escape(name), nn.Parameter(value.detach().clone(), requires_grad=not frozen.get(j, False)))
                    for name, value in parameters.items()
                ]
            )
            for j in range(num_bends)
        )
        buffers = {name: template.get_buffer(name) for name in self.buffer_names}
        self.endpoint_buffers = nn.ModuleList([_Buffers(buffers), _Buffers(buffers)])

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_bends={self.num_bends}, fix_start={self.fix_start}, fix_end={self.fix_end}"

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The free bends: the only parameters that require gradients."""
        return (parameter for parameter in self.parameters() if parameter.requires_grad)

    def bend(self, j: int) -> dict[str, Tensor]:
        """Control point j as {template parameter name: tensor}, in the template's parameter order."""
        stored = cast(nn.ParameterDict, self.bends[j])
        return {name: stored[key] for name, key in zip(self.parameter_names, self._keys, strict=True)}

    def coefficients(self, t: Scalar) -> list[float]:
        """c_j(t) of this curve's kind, one per bend."""
        return self._coefficients(_check_t(t), self.num_bends)

    def set_endpoints(self, start_state_dict: Mapping[str, Tensor], end_state_dict: Mapping[str, Tensor]) -> None:
        """Set bend 0 to endpoint A, the last bend to endpoint B and the bends between on the straight segment.

        Interior bend j starts at (1 - j/(n-1)) A + j/(n-1) B, the initialisation of Garipov et al. (2018).
        Each endpoint's buffers are kept for `endpoint()`; the template gets endpoint A's buffers.

        Args:
            start_state_dict: endpoint A's full state_dict (parameters and buffers; prefixes are stripped).
            end_state_dict: endpoint B's full state_dict.

        Raises:
            CheckpointError: naming the first missing, unexpected or mismatched tensor.
        """
        start = match_state_dict(start_state_dict, self.template, "endpoint A")
        end = match_state_dict(end_state_dict, self.template, "endpoint B")
        last = self.num_bends - 1
        with torch.no_grad():
            for j in range(self.num_bends):
                for name, value in self.bend(j).items():
                    a, b = start[name].to(value), end[name].to(value)
                    value.copy_(a if j == 0 else b if j == last else torch.lerp(a, b, j / last))
            for name, value in self.template.named_parameters():
                value.copy_(start[name])
            for stored, state in zip(self.endpoint_buffers, (start, end), strict=True):
                for name in self.buffer_names:
                    stored.get_buffer(escape(name)).copy_(state[name])
                    if state is start:
                        self.template.get_buffer(name).copy_(state[name])

    def weights(self, t: Scalar) -> dict[str, Tensor]:
        """w(t) = sum_j c_j(t) theta_j for every template parameter, computed once with fused foreach ops.

        The sum is a running average: w <- lerp(w, theta_j, c_j / (c_0 + ... + c_j)), fixed bends first, so
        autograd needs one product per free bend and the whole step is about 1.7x cheaper than mul-and-add.
        Every bend enters, even with c_j(t) = 0, so each free bend gets a gradient on every step (DDP without
        `find_unused_parameters` needs that; polychain otherwise leaves bends unused).
        """
        coefficients = self.coefficients(t)
        order = self._fixed_first
        mixed = list(self.bend(order[0]).values())
        total = coefficients[order[0]]
        for j in order[1:]:
            total += coefficients[j]
            ratio = coefficients[j] / total if total > 0 else 0.0
            mixed = list(torch._foreach_lerp(mixed, list(self.bend(j).values()), ratio))
        return dict(zip(self.parameter_names, mixed, strict=True))

    def run(self, x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
        """The template on `x` with the given parameters and its own buffers (BN updates them in train mode).

        Lets a training step reuse one `weights(t)` for the output and a penalty such as ||w(t)||^2.
        """
        tensors = dict(weights)
        for alias, name in self._aliases:
            tensors[alias] = tensors[name]
        for name, module, attribute in self._buffer_slots:
            buffer = module._buffers[attribute]
            if buffer is not None:
                tensors[name] = buffer
        return functional_call(self.template, tensors, (x,), strict=True, tie_weights=False)

    def forward(self, x: Tensor, t: Scalar) -> Tensor:
        """The network at position t on the curve applied to `x`."""
        return self.run(x, self.weights(t))

    def at(self, t: Scalar) -> CurvePoint:
        """A light view of the point at t: `forward(x) == curve(x, t)` with w(t) detached, nothing copied."""
        return CurvePoint(self, t)

    def materialize(self, t: Scalar) -> nn.Module:
        """An independent copy of the template holding w(t) and the template's current buffers."""
        with torch.no_grad():
            weights = self.weights(t)
        return self._plain_copy(weights, dict(self.template.named_buffers()))

    def endpoint(self, which: int) -> nn.Module:
        """A plain copy of endpoint A (`which=0`) or B (`which=1`) with that endpoint's own BN statistics."""
        if which not in (0, 1):
            raise ConfigError(f"endpoint is 0 (A) or 1 (B), got {which}")
        stored = self.endpoint_buffers[which]
        buffers = {name: stored.get_buffer(escape(name)) for name in self.buffer_names}
        return self._plain_copy(self.bend(0 if which == 0 else self.num_bends - 1), buffers)

    def _plain_copy(self, weights: Mapping[str, Tensor], buffers: Mapping[str, Tensor]) -> nn.Module:
        module = copy.deepcopy(self.template)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                parameter.copy_(weights[name])
            for name, buffer in module.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        return module.requires_grad_(True)


class CurvePoint(nn.Module):
    """The network at one t of a curve, as a plain `f(x)`: what evaluation, attacks and BN recompute take.

    The curve is a submodule, so `.eval()`, `.train()` and `recompute_bn(point, loader)` reach the template's
    BN layers. w(t) is recomputed detached on every call: a point evaluates, the curve itself trains.

    Args:
        curve: the curve the point lies on.
        t: position in [0, 1].
    """

    def __init__(self, curve: CurveModel, t: Scalar) -> None:
        super().__init__()
        self.curve = curve
        self.t = _check_t(t)

    def extra_repr(self) -> str:
        return f"t={self.t}"

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            weights = self.curve.weights(self.t)
        return self.curve.run(x, weights)
