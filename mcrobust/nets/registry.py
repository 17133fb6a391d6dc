"""A small registry of architectures: `create_net("preresnet", depth=26)` and `list_nets()`.

Every registered net takes images in [0,1] and starts with a `Normalize` layer, so triggers,
PGD's eps-ball and the input Hessian all live in pixel space whatever the architecture.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mcrobust.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a net factory (class or function) under `name`."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"net {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_nets() -> list[str]:
    """Names of every registered net, sorted."""
    return sorted(_REGISTRY)


def create_net(name: str, **kwargs) -> nn.Module:
    """Build the registered net `name` with its keyword arguments."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown net {name!r}; choose one of {', '.join(list_nets())}")
    return _REGISTRY[name](**kwargs)
