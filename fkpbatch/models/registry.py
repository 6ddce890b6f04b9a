"""A small model registry: ``@register_model`` + ``create_model(name)``; clashes are refused."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UnknownModelError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``builder`` under its function name."""
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder
    return builder


def create_model(name: str, **kwargs) -> nn.Module:
    """Build architecture ``name`` (e.g. ``create_model('seed', num_keypoints=15)``)."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown arch {name!r}; choose from {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kwargs)


def list_models() -> list[str]:
    return sorted(_MODELS)
