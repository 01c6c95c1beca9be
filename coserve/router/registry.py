"""Building a registered estimator by name, with the errors a library file's author can act on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from coserve.errors import ConfigError

__all__ = ["build"]

T = TypeVar("T")


def build(kind: str, registry: Mapping[str, Callable[..., T]], name: str, params: dict[str, Any]) -> T:
    """``registry[name](**params)``; an unknown name or a bad parameter is a ConfigError."""
    try:
        factory = registry[name]
    except KeyError:
        raise ConfigError(f"unknown {kind} {name!r}; known: {sorted(registry)}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for {kind} {name!r}: {exc}") from None
