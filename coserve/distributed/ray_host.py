"""The expert host: one per node, running coserve's own Engine and tiered pool over the experts the
planner placed on that node (so tiers, lookahead eviction and expert batching hold inside it). The
placement controller changes that set while it runs (``assign``, ``add``, ``pin``, ``remove``).

Every call but ``stream`` names the node it is for first: the hosts are replicas of one Ray Serve
deployment, and its request router (coserve.distributed.ray_router) sends such a call to that node's
replica (a call that reaches another node's is refused, ``wrong_node``). The ingress
(coserve.distributed.ray_engine) has already routed a request; ``stream(request, expert, nodes)``
may run on the replica of any of ``nodes``, which the router picks, and the host runs it on exactly
the expert it was sent for (fallback to other experts is the ingress's). ``stream`` is an async
generator, called through a deployment handle with ``stream=True``: it first yields a node record
(``{"node": name}``: who answers), then the engine's ``Chunk`` objects; a failure is yielded as a
plain error record (``error_record``) rather than raised, so the error's class, status, code and
Retry-After cross the process boundary intact; ``raise_record`` rebuilds the error on the other side.

This module is a plain class: it imports no Ray (coserve.distributed.ray_app makes it a deployment).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from coserve import errors
from coserve.config import LibraryConfig
from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.errors import CoserveError, ExpertLoadError
from coserve.types import Chunk, Decision, Request

__all__ = [
    "NOT_PLACED",
    "WRONG_NODE",
    "ExpertHost",
    "error_record",
    "library_file",
    "node_library",
    "raise_record",
    "served_library",
]

NOT_PLACED = "not_placed"  # the error code of a call for an expert this host does not serve (now)
WRONG_NODE = "wrong_node"  # the error code of a call meant for another node's host
DRAIN_TIMEOUT_S = 120.0  # the longest a removed expert's running calls are waited for
DRAIN_POLL_S = 0.05


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
    retry_after = record.get("retry_after")
    raise cls(
        str(record.get("message")),
        param=record.get("param"),
        code=record.get("code"),
        retry_after=None if retry_after is None else int(retry_after),
    )


class ExpertHost:
    """Serves the experts placed on one node with its own engine and pool; the placement controller
    (coserve.distributed.controller) adds, pins and removes experts while it runs."""

    def __init__(
        self,
        library_path: str | None,
        node: str,
        experts: Iterable[str],
        ram_bytes: int,
        accelerator_bytes: int = 0,
        resident: Iterable[str] = (),
    ):
        from coserve.paths import cache_dir

        library = node_library(served_library(library_path), ram_bytes, accelerator_bytes)
        self.node = node
        self.experts = set(experts)
        self.engine = Engine.build(library, cache_dir(), routed=False)  # calls come routed by an ingress
        self.running: Counter[str] = Counter()  # calls in progress here, per expert (what a drain waits for)
        for expert in resident:
            self.engine.pool.pin(expert)  # loaded on first use, then never evicted

    def _mine(self, node: str) -> None:
        if node != self.node:
            raise ExpertLoadError(f"a call for node {node!r} reached node {self.node!r}'s host", code=WRONG_NODE)

    def state(self, node: str) -> dict[str, Any]:
        """This host's node, the experts placed on it and the tier of each (what replica choice reads)."""
        self._mine(node)
        return self._state()

    def _state(self) -> dict[str, Any]:
        residency = self.engine.pool.residency()
        return {"node": self.node, "tiers": {e: str(residency[e]) for e in sorted(self.experts)}}

    async def add(self, node: str, expert: str, resident: bool) -> dict[str, Any]:
        """Serve ``expert`` here from now on: a resident one is pinned and loaded before this returns,
        a swapped one staged into RAM where the budget has room."""
        self._mine(node)
        self.experts.add(expert)
        if resident:
            await self.pin(node, expert, True)
        else:
            await self.engine.pool.prefetch(expert)
        return self._state()

    async def pin(self, node: str, expert: str, pinned: bool) -> dict[str, Any]:
        """Keep ``expert`` loaded (and load it now), or let the pool evict it again."""
        self._mine(node)
        pool = self.engine.pool
        pool.pin(expert, pinned)
        if pinned:
            (await pool.acquire(expert)).release()
        return self._state()

    async def remove(self, node: str, expert: str) -> dict[str, Any]:
        """Serve ``expert`` no more: new calls for it are refused (``not_placed``), those running finish
        (at most ``DRAIN_TIMEOUT_S``), then it is unpinned and evicted."""
        self._mine(node)
        self.experts.discard(expert)
        waited = 0.0
        while self.running[expert] > 0 and waited < DRAIN_TIMEOUT_S:
            await asyncio.sleep(DRAIN_POLL_S)
            waited += DRAIN_POLL_S
        self.engine.pool.pin(expert, False)
        if expert in self.engine.library.expert_names:
            self.engine.pool.evict_when_idle(expert)
        return self._state()

    async def assign(self, node: str, experts: list[str], resident: list[str]) -> dict[str, Any]:
        """Serve exactly ``experts`` (``resident`` ones pinned): what the controller sets a host it has
        not set yet to (a restarted host carries its start-time experts)."""
        self._mine(node)
        for expert in sorted(self.experts - set(experts)):
            await self.remove(node, expert)
        for expert in experts:
            await self.add(node, expert, expert in resident)
        return self._state()

    def metrics(self, node: str) -> str:
        """This host's engine metrics, in Prometheus's text format (the ingress merges them)."""
        self._mine(node)
        return self.engine.metrics.text()

    def health(self, node: str) -> dict[str, Any]:
        """The engine's health (experts placed here only), for the ingress's ``/health``."""
        self._mine(node)
        health = self.engine.health()
        health["experts"] = {e: s for e, s in health["experts"].items() if e in self.experts}
        return {"node": self.node, **health}

    def load_counts(self, node: str) -> dict[str, int]:
        """Loads (RAM -> ACTIVE) per expert placed here since the host started (the cluster benchmark's count)."""
        self._mine(node)
        registry = self.engine.metrics.registry
        count = registry.get_sample_value
        return {e: int(count("coserve_expert_loads_total", {"expert": e}) or 0) for e in sorted(self.experts)}

    async def stream(
        self, request: Request, expert: str, nodes: Iterable[str] = ()
    ) -> AsyncIterator[Chunk | dict[str, Any]]:
        """Run ``request`` on ``expert`` here (``nodes``: where the router could send it, for the
        router); yields the node record, then its chunks, or one error record and stops."""
        call = Call(request)
        call.decision = Decision(expert, None, 1.0, (), "placed")
        self.running[expert] += 1
        try:
            yield {"node": self.node}
            if expert not in self.experts:
                raise ExpertLoadError(f"expert {expert!r} is not placed on node {self.node!r}", code=NOT_PLACED)
            chunks = await self.engine.stream_one(call)  # exactly this expert: never cascaded here
            async for chunk in chunks:
                yield chunk
        except CoserveError as exc:
            yield error_record(exc)
        finally:
            self.running[expert] -= 1

    async def close(self) -> None:
        await self.engine.close()


def node_library(library: LibraryConfig, ram_bytes: int, accelerator_bytes: int = 0) -> LibraryConfig:
    """The library with one node's memory budgets. Host memory bounds the pool's RAM tier (the planner
    fitted the placed experts into it); the ACTIVE tier counts loaded footprints: on a node with an
    accelerator and a library with experts on one, the node's accelerator memory, else within the
    same host-memory bound."""
    from coserve.distributed.inputs import on_device

    active = min(library.memory.active, ram_bytes)
    if accelerator_bytes > 0 and any(on_device(spec) for spec in library.experts):
        active = accelerator_bytes
    return library.model_copy(update={"memory": library.memory.model_copy(update={"ram": ram_bytes, "active": active})})


def served_library(path: str | None) -> LibraryConfig:
    """The library file at ``path`` (default: the bundled one), checked and with its map solved."""
    from coserve.backends.registry import check_library
    from coserve.config import load_library
    from coserve.router.measured import with_measured_map

    return with_measured_map(check_library(load_library(path)))


def library_file(path: str | None) -> str | None:
    """The library path as the hosts will read it (absolute, so every process finds the same file)."""
    return str(Path(path).resolve()) if path else None
