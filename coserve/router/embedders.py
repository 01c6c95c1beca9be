"""The embedders by name: ``make_embedder("minilm-static+features")`` and the bench's variants.

Names: ``minilm`` (all-MiniLM-L6-v2, numpy fp32), ``minilm-int8`` (the same model, int8 ONNX on ONNX
Runtime; the optional extra ``onnx``), ``minilm-static`` (word-piece vectors distilled from it),
``hashing`` (tests). A ``+features`` suffix appends the cheap prompt features
(``coserve.router.features``). A variant adds constructor options after a colon, for benchmarks:
``minilm:max_tokens=128``, ``minilm-int8:threads=2,io_binding=1``. This module knows nothing about
routers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coserve.errors import ConfigError

if TYPE_CHECKING:
    from coserve.router.embed import Embedder

__all__ = ["EMBEDDER_NAMES", "STACK_EMBEDDER", "make_embedder", "parse_variant"]

FEATURES_SUFFIX = "+features"
STACK_EMBEDDER = "minilm-static+features"  # what ``coserve train`` fits its default (stack) router on


# Each factory imports its module when called: the command line imports this module for the names.
def _minilm(**options: Any) -> Embedder:
    from coserve.router.embed import MiniLMEmbedder

    return MiniLMEmbedder(**options)


def _hashing(**options: Any) -> Embedder:
    from coserve.router.embed import HashingEmbedder

    return HashingEmbedder(**options)


def _static(**options: Any) -> Embedder:
    from coserve.router.embed_static import StaticMiniLMEmbedder

    return StaticMiniLMEmbedder(**options)


def _int8(**options: Any) -> Embedder:
    from coserve.router.embed_onnx import OnnxMiniLMEmbedder

    return OnnxMiniLMEmbedder(**options)


_FACTORIES: dict[str, Callable[..., Embedder]] = {
    "minilm": _minilm,
    "minilm-int8": _int8,
    "minilm-static": _static,
    "hashing": _hashing,
}
EMBEDDER_NAMES = tuple(sorted([*_FACTORIES, *(n + FEATURES_SUFFIX for n in _FACTORIES)]))


def make_embedder(spec: str, **options: Any) -> Embedder:
    """Build an embedder by its registered name or variant (``+features`` appends the prompt
    features; ``name:key=value`` passes options, as in ``minilm+features:max_tokens=128``)."""
    name, parsed = parse_variant(spec)
    options = {**parsed, **options}
    base_name = name.removesuffix(FEATURES_SUFFIX)
    factory = _FACTORIES.get(base_name)
    if factory is None:
        raise ConfigError(f"unknown embedder {name!r}; known: {list(EMBEDDER_NAMES)}")
    try:
        base = factory(**options)
    except TypeError as exc:
        raise ConfigError(f"embedder {base_name!r}: bad option: {exc}") from None
    if base_name == name:
        return base
    from coserve.router.features import FeaturedEmbedder

    return FeaturedEmbedder(base)


def parse_variant(spec: str) -> tuple[str, dict[str, int]]:
    """``"minilm:max_tokens=128,threads=2"`` -> ``("minilm", {"max_tokens": 128, "threads": 2})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ConfigError(f"embedder variant {spec!r}: options are key=integer, got {item!r}")
        options[key.strip()] = int(value)
    return name, options
