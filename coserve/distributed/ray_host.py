"""The expert host: one per node, running coserve's own Engine and tiered pool over the experts the
planner placed on that node (so tiers, lookahead eviction and expert batching hold inside it).

The ingress (coserve.distributed.ray_engine) has already routed a request and chosen this host; the
host runs it on exactly the expert it was sent for (fallback to other experts is the ingress's, which
sees every host). ``stream`` is an async generator, called through a Ray Serve deployment handle
with ``stream=True``: it yields the engine's ``Chunk`` objects, and a failure is yielded as a plain
error record (``error_record``) rather than raised, so the error's class, status, code and
Retry-After cross the process boundary intact; ``raise_record`` rebuilds the error on the other side.

This module is a plain class: it imports no Ray (coserve.distributed.ray_app makes it a deployment).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from coserve import errors
from coserve.config import LibraryConfig
from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.errors import CoserveError, ExpertLoadError
from coserve.types import Chunk, Decision, Request

__all__ = ["ExpertHost", "error_record", "library_file", "raise_record", "served_library"]


def error_record(exc: CoserveError) -> dict[str, Any]:
    """A CoserveError as plain data: ``{"error": class name, "message", "param", "code", "retry_after"}``."""
    return {
        "error": type(exc).__name__,
        "message": exc.message,
        "param": exc.param,
        "code": exc.code,
        "retry_after": exc.retry_after,
    }


def raise_record(record: dict[str, Any]) -> None:
    """Raise the CoserveError an ``error_record`` describes (ExpertFailed when its class is unknown)."""
    cls = getattr(errors, str(record.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, CoserveError)):
        cls = errors.ExpertFailed
    exc = cls.__new__(cls)
    CoserveError.__init__(exc, str(record.get("message")), param=record.get("param"), code=record.get("code"))
    if record.get("retry_after") is not None:
        exc.retry_after = int(record["retry_after"])
    raise exc


class ExpertHost:
    """Serves the experts placed on one node with its own engine and pool."""

    def __init__(self, library_path: str | None, node: str, experts: Iterable[str], ram_bytes: int):
        from coserve.paths import cache_dir

        library = served_library(library_path)
        # The node's budget for host memory bounds the pool's RAM tier (the planner fitted the
        # placed experts into it); the ACTIVE budget stays the library's, within the same bound.
        memory = library.memory.model_copy(update={"ram": ram_bytes, "active": min(library.memory.active, ram_bytes)})
        library = library.model_copy(update={"memory": memory})
        self.node = node
        self.experts = frozenset(experts)
        self.engine = Engine.build(library, cache_dir())

    def state(self) -> dict[str, Any]:
        """This host's node and the tier of each expert placed on it (what replica choice reads)."""
        residency = self.engine.pool.residency()
        return {"node": self.node, "tiers": {e: str(residency[e]) for e in sorted(self.experts)}}

    def health(self) -> dict[str, Any]:
        """The engine's health (experts placed here only), for the ingress's ``/health``."""
        health = self.engine.health()
        health["experts"] = {e: s for e, s in health["experts"].items() if e in self.experts}
        return {"node": self.node, **health}

    async def stream(self, request: Request, expert: str) -> AsyncIterator[Chunk | dict[str, Any]]:
        """Run ``request`` on ``expert`` here; yields its chunks, or one error record and stops."""
        call = Call(request)
        call.decision = Decision(expert, None, 1.0, (), "placed")
        try:
            if expert not in self.experts:
                raise ExpertLoadError(f"expert {expert!r} is not placed on node {self.node!r}", code="not_placed")
            chunks = await self.engine.stream_one(call)  # exactly this expert: never cascaded here
            async for chunk in chunks:
                yield chunk
        except CoserveError as exc:
            yield error_record(exc)

    async def close(self) -> None:
        await self.engine.close()


def served_library(path: str | None) -> LibraryConfig:
    """The library file at ``path`` (default: the bundled one), checked and with its map solved."""
    from coserve.backends.registry import check_library
    from coserve.config import load_library
    from coserve.router.measured import with_measured_map

    return with_measured_map(check_library(load_library(path)))


def library_file(path: str | None) -> str | None:
    """The library path as the hosts will read it (absolute, so every process finds the same file)."""
    return str(Path(path).resolve()) if path else None
