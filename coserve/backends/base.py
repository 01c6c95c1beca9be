"""The Backend protocol: how the engine loads an expert and generates with it.

Backends are synchronous and thread-safe: the engine calls them from worker threads so the event
loop never blocks on a model. A backend knows one runtime; it knows nothing about routing,
queues or budgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from coserve.config import ExpertSpec
from coserve.errors import ExpertLoadError
from coserve.types import Chunk, Message, Sampling

__all__ = ["Backend", "Emit", "Handle", "validated"]

# Called with each streamed chunk; returning True asks the backend to stop generating (cancel).
Emit = Callable[[Chunk], bool]


@dataclass
class Handle:
    """A loaded expert: the runtime object and what it costs."""

    spec: ExpertSpec
    runtime: Any  # the backend's own object (an xllamacpp.Server, an HTTP client, ...)
    nbytes: int  # bytes of weights this instance holds (its footprint is Backend.footprint)
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """Loads experts and generates with them."""

    name: str

    def stage(self, spec: ExpertSpec, base: Path | None) -> Any:
        """DISK -> RAM: hold the expert's weights in host memory; returns an object with ``release()``."""
        ...

    def unstage(self, staged: Any) -> None:
        """RAM -> DISK."""
        ...

    def load(self, spec: ExpertSpec, base: Path | None) -> Handle:
        """Load the expert's runtime (raises ExpertLoadError / AssetError)."""
        ...

    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        """Generate, calling ``emit`` per chunk; the last chunk carries finish_reason and usage."""
        ...

    def unload(self, handle: Handle) -> None:
        """Release the runtime and its memory."""
        ...

    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        """Bytes of the expert's weights: what the RAM tier holds and a move copies."""
        ...

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        """Bytes the expert occupies when ACTIVE, known before loading it: its weights plus the
        runtime's own state (KV cache for every slot, compute buffers, repacked weight copies)."""
        ...


def validated(backend: Backend, handle: Handle, started: float) -> Handle:
    """Check a freshly loaded expert with one greedy token through its chat template (before the
    pool releases anyone for it); on failure unload it and raise ExpertLoadError."""
    try:
        backend.stream(handle, (Message("user", "Hi"),), Sampling(max_tokens=1, temperature=0.0), lambda chunk: False)
    except Exception as exc:
        backend.unload(handle)
        raise ExpertLoadError(f"expert {handle.spec.name!r} loaded but failed its first generation: {exc}") from None
    handle.load_seconds = time.monotonic() - started
    return handle
