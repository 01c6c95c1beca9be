"""The expert pool: which experts are loaded, within a byte budget, and who is using them.

v0 policy (the tiered pool with lookahead comes with the serving-engine work):
* load on first use; one load per expert at a time (concurrent requests wait for that one load);
* loaded experts' bytes (plus loads in progress) stay within the budget;
* to make room, evict the least recently used expert that has no request in flight; an expert
  with work in flight is never evicted — if nothing can be evicted, the load waits until a
  request finishes;
* a failed load leaves the other experts serving and is reported to every waiter.

The pool knows nothing about routing or HTTP; it runs backends' blocking calls in threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from coserve.backends.base import Backend, Handle
from coserve.config import LibraryConfig
from coserve.errors import CoserveError, ExpertLoadError
from coserve.metrics import Metrics
from coserve.types import Tier

__all__ = ["ExpertPool", "Lease"]


@dataclass
class _Slot:
    handle: Handle | None = None
    loading: asyncio.Future[Handle] | None = None
    in_flight: int = 0  # requests holding a lease
    last_used: float = 0.0  # monotonic seconds
    nbytes: int = 0


@dataclass
class Lease:
    """A pinned, loaded expert; ``release()`` unpins it (idempotent)."""

    handle: Handle
    _release: Callable[[], None] = field(repr=False)
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


class ExpertPool:
    """Loaded experts under a byte budget, LRU eviction, single-flight loads, pins."""

    def __init__(
        self,
        library: LibraryConfig,
        backends: dict[str, Backend],
        budget_bytes: int,
        executor: Executor | None = None,
        metrics: Metrics | None = None,
    ):
        self.library = library
        self.backends = backends  # expert name -> its backend
        self.budget_bytes = budget_bytes
        self.executor = executor
        self.metrics = metrics
        self.base: Path | None = library.path.parent if library.path else None
        self._slots = {name: _Slot() for name in library.expert_names}
        self._cond: asyncio.Condition | None = None

    @property
    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # created lazily, inside the running loop
            self._cond = asyncio.Condition()
        return self._cond

    # -- queries --------------------------------------------------------------------------------
    def residency(self) -> dict[str, Tier]:
        return {name: Tier.ACTIVE if slot.handle else Tier.DISK for name, slot in self._slots.items()}

    def used_bytes(self) -> int:
        return sum(s.nbytes for s in self._slots.values() if s.handle is not None or s.loading is not None)

    def in_flight(self, name: str) -> int:
        return self._slots[name].in_flight

    # -- acquire / release ----------------------------------------------------------------------
    async def acquire(self, name: str) -> Lease:
        """Pin the expert, loading it first if needed."""
        slot = self._slots[name]
        cond = self._condition
        async with cond:
            while True:
                if slot.handle is not None:
                    slot.in_flight += 1
                    slot.last_used = time.monotonic()
                    if self.metrics:
                        self.metrics.pool_hits.labels(name).inc()
                    return Lease(slot.handle, lambda: self._release(name))
                if slot.loading is not None:
                    loading = slot.loading
                    cond.release()
                    try:
                        await asyncio.shield(loading)
                    except CoserveError:
                        pass  # the loader raises it to its own caller; this waiter retries or fails alike
                    finally:
                        await cond.acquire()
                    if loading.exception() is not None:
                        raise loading.exception()  # type: ignore[misc]
                    continue
                if await self._make_room(name, slot):
                    break
        return await self._load(name, slot)

    async def _make_room(self, name: str, slot: _Slot) -> bool:
        """Evict idle LRU experts until ``name`` fits; waits (under the condition) while it cannot."""
        backend = self.backends[name]
        spec = self.library.expert(name)
        slot.nbytes = await asyncio.get_running_loop().run_in_executor(self.executor, backend.nbytes, spec, self.base)
        if slot.nbytes > self.budget_bytes:
            raise ExpertLoadError(
                f"expert {name!r} needs {slot.nbytes} bytes, more than the memory budget ({self.budget_bytes} bytes)"
            )
        if slot.handle is not None or slot.loading is not None:
            return False  # someone else loaded it while we measured; the caller loops
        while self.used_bytes() + slot.nbytes > self.budget_bytes:
            idle = [(s.last_used, n) for n, s in self._slots.items() if s.handle is not None and s.in_flight == 0]
            if not idle:
                await self._condition.wait()  # every resident expert is busy: wait for a release
                return False
            _, victim = min(idle)
            self._evict(victim)
        slot.loading = asyncio.get_running_loop().create_future()
        return True

    async def _load(self, name: str, slot: _Slot) -> Lease:
        spec = self.library.expert(name)
        loop = asyncio.get_running_loop()
        assert slot.loading is not None
        loading = slot.loading
        start = time.monotonic()
        try:
            handle = await loop.run_in_executor(self.executor, self.backends[name].load, spec, self.base)
        except BaseException as exc:
            async with self._condition:
                slot.loading = None
                error = exc if isinstance(exc, CoserveError) else ExpertLoadError(f"expert {name!r}: {exc}")
                loading.set_exception(error)
                loading.exception()  # mark retrieved: waiters may be gone
                if self.metrics:
                    self.metrics.pool_load_failures.labels(name).inc()
                self._condition.notify_all()
            raise error from None
        async with self._condition:
            slot.handle = handle
            slot.nbytes = handle.nbytes
            slot.loading = None
            slot.in_flight += 1
            slot.last_used = time.monotonic()
            loading.set_result(handle)
            if self.metrics:
                self.metrics.pool_loads.labels(name).inc()
                self.metrics.pool_load_seconds.labels(name).observe(time.monotonic() - start)
                self.metrics.pool_misses.labels(name).inc()
                self._publish()
            self._condition.notify_all()
        return Lease(handle, lambda: self._release(name))

    def _evict(self, name: str) -> None:
        slot = self._slots[name]
        assert slot.handle is not None and slot.in_flight == 0, "never evict an expert with work in flight"
        handle, slot.handle = slot.handle, None
        self.backends[name].unload(handle)
        if self.metrics:
            self.metrics.pool_evictions.labels(name).inc()
            self._publish()

    def _release(self, name: str) -> None:
        slot = self._slots[name]
        slot.in_flight -= 1
        slot.last_used = time.monotonic()
        cond = self._condition

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def _publish(self) -> None:
        if self.metrics:
            for expert, tier in self.residency().items():
                self.metrics.pool_resident.labels(expert).set(1 if tier is Tier.ACTIVE else 0)
            self.metrics.pool_bytes.set(self.used_bytes())

    async def close(self) -> None:
        """Unload every expert (on shutdown)."""
        async with self._condition:
            for name, slot in self._slots.items():
                if slot.handle is not None:
                    handle, slot.handle = slot.handle, None
                    self.backends[name].unload(handle)
