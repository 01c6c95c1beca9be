"""The expert pool: each expert in one of three tiers under a byte budget per tier.

    DISK    the model file only
    RAM     the file's pages held in host memory (``Backend.stage``)
    ACTIVE  a loaded runtime (``Backend.load``); on CPU its weights are those same RAM pages

The RAM budget counts weights (``Backend.nbytes``) of every expert not on DISK; the ACTIVE budget
counts each loaded runtime's whole footprint (``Backend.footprint``: weights plus KV caches,
compute buffers and repacked copies), so it bounds what loaded experts really hold.

Rules:
* one move per expert at a time (single flight): concurrent requests wait for that one load;
* moves are two-phase: the incoming expert is loaded before any victim is released, so a failed
  load leaves the resident set serving; the failed expert goes into backoff (doubling, capped);
* an expert with work in flight is never evicted, and one made ACTIVE less than
  ``min_residency_s`` ago is evicted only when nothing else can make room (anti-thrashing);
* victims are chosen with lookahead: the expert whose next queued request is furthest away
  (never needed = infinitely far) goes first, then the least recently used;
* an ACTIVE expert that is evicted drops to RAM when the RAM budget allows, else to DISK.

The pool knows nothing about routing or HTTP; backends' blocking calls run in an executor.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coserve.backends.base import Backend, Handle
from coserve.config import LibraryConfig
from coserve.errors import CoserveError, ExpertLoadError
from coserve.metrics import Metrics
from coserve.types import Tier

__all__ = ["ExpertPool", "Lease"]

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass
class _Slot:
    nbytes: int = 0  # weights: what RAM holds and a move copies
    footprint: int = 0  # bytes when ACTIVE
    staged: Any = None  # the backend's RAM-tier object (has .release()), or None
    handle: Handle | None = None
    moving: asyncio.Future[None] | None = None  # a move in progress (stage or load)
    in_flight: int = 0
    last_used: float = 0.0  # monotonic seconds
    active_since: float = 0.0
    backoff_until: float = 0.0
    backoff_s: float = 0.0
    last_error: str = ""

    @property
    def tier(self) -> Tier:
        return Tier.ACTIVE if self.handle else Tier.RAM if self.staged is not None else Tier.DISK


@dataclass
class Lease:
    """A pinned ACTIVE expert; ``release()`` unpins it (idempotent)."""

    handle: Handle
    _release: Callable[[], None] = field(repr=False)
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


class ExpertPool:
    """Tiered expert residency with lookahead eviction."""

    def __init__(
        self,
        library: LibraryConfig,
        backends: dict[str, Backend],
        budget_bytes: int,
        executor: Executor | None = None,
        metrics: Metrics | None = None,
        ram_budget_bytes: int | None = None,
        min_residency_s: float = 0.0,
    ):
        self.library = library
        self.backends = backends  # expert name -> its backend
        self.budget_bytes = budget_bytes  # ACTIVE tier
        self.ram_budget_bytes = ram_budget_bytes if ram_budget_bytes is not None else budget_bytes
        self.executor = executor
        self.metrics = metrics
        self.min_residency_s = min_residency_s
        self.base: Path | None = library.path.parent if library.path else None
        self._slots = {name: _Slot() for name in library.expert_names}
        self._cond: asyncio.Condition | None = None
        self.next_use: Callable[[], Mapping[str, float]] = dict  # lookahead source (the scheduler's)
        self._tasks: set[asyncio.Task[None]] = set()  # background moves and settles, kept referenced
        self.switch_seconds: list[float] = []  # DISK/RAM -> ACTIVE move times, for benchmarks
        self.bytes_moved = 0

    @property
    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # created lazily, inside the running loop
            self._cond = asyncio.Condition()
        return self._cond

    def note_unavailable(self, name: str, message: str) -> None:
        """Record why an expert cannot load (found at start: a missing model file), for /health;
        its requests still try it and fall back, so a file put in place later is picked up."""
        self._slots[name].last_error = message

    def rebind(self) -> None:
        """Forget loop-bound primitives (the engine moved to a new event loop); state is kept."""
        self._cond = None
        self._tasks = set()

    # -- queries --------------------------------------------------------------------------------
    def residency(self) -> dict[str, Tier]:
        return {name: slot.tier for name, slot in self._slots.items()}

    def used_bytes(self) -> int:
        """Bytes in the ACTIVE tier, loads in progress included."""
        return sum(s.footprint for s in self._slots.values() if s.handle is not None or s.moving is not None)

    def ram_bytes(self) -> int:
        """Bytes held in host memory (RAM and ACTIVE tiers)."""
        return sum(s.nbytes for s in self._slots.values() if s.tier is not Tier.DISK or s.moving is not None)

    def in_flight(self, name: str) -> int:
        return self._slots[name].in_flight

    def state(self, name: str) -> dict[str, Any]:
        slot = self._slots[name]
        now = time.monotonic()
        return {
            "tier": slot.tier.value,
            "weights_bytes": slot.nbytes or None,  # known once it was first measured (staged or loaded)
            "footprint_bytes": slot.footprint or None,  # what ACTIVE counts for it
            "in_flight": slot.in_flight,
            "loading": slot.moving is not None,
            "backoff_s": max(0.0, round(slot.backoff_until - now, 3)),
            "last_error": slot.last_error or None,
        }

    # -- acquire / release ----------------------------------------------------------------------
    async def acquire(self, name: str) -> Lease:
        """Pin the expert in the ACTIVE tier, moving it there first if needed."""
        slot = self._slots[name]
        cond = self._condition
        waited = False  # a request that waited for a move is a miss, not a hit
        async with cond:
            while True:
                if slot.handle is not None:
                    slot.in_flight += 1
                    slot.last_used = time.monotonic()
                    if not waited:
                        self._count("hits", name)
                    return Lease(slot.handle, lambda: self._release(name))
                if slot.moving is not None:
                    waited = True
                    moving = slot.moving
                    await self._wait_for(moving)
                    if not moving.cancelled() and moving.exception() is not None:
                        raise moving.exception()  # type: ignore[misc]  # the move this caller waited for failed
                    continue
                if time.monotonic() < slot.backoff_until:
                    raise ExpertLoadError(
                        f"expert {name!r} is in backoff after a failed load ({slot.last_error})", code="expert_backoff"
                    )
                if await self._reserve(name, slot):
                    # The move runs as a task of its own: a caller that goes away while waiting
                    # cancels only its wait, never the load that others may be waiting for.
                    self._spawn(self._activate(name, slot))

    async def _wait_for(self, future: asyncio.Future[None]) -> None:
        """Wait for another coroutine's move, releasing the condition meanwhile."""
        cond = self._condition
        cond.release()
        try:
            await asyncio.shield(future)
        except CoserveError:
            pass  # the mover's failure sets backoff; the caller's loop reports it
        finally:
            await cond.acquire()

    async def _measure(self, name: str, slot: _Slot) -> None:
        if not slot.footprint:
            spec = self.library.expert(name)
            backend = self.backends[name]
            loop = asyncio.get_running_loop()
            try:
                slot.nbytes = await loop.run_in_executor(self.executor, backend.nbytes, spec, self.base)
                slot.footprint = await loop.run_in_executor(self.executor, backend.footprint, spec, self.base)
            except Exception as exc:  # a missing or unreadable file: as a failed load
                slot.nbytes = slot.footprint = 0
                raise self._failed(name, slot, exc) from None
        if slot.footprint > self.budget_bytes:
            raise ExpertLoadError(
                f"expert {name!r} needs {slot.footprint} bytes when loaded (weights, KV cache and buffers), "
                f"more than the ACTIVE memory budget ({self.budget_bytes} bytes)"
            )

    def _victims(self, exclude: str, tier: Tier, need: int, used: int, budget: int) -> list[str] | None:
        """Idle experts to move out of ``tier`` so ``need`` more bytes fit; None if impossible now."""
        now = time.monotonic()
        next_use = self.next_use()

        def order(name: str) -> tuple[float, float]:
            # furthest next use first (never = inf), then least recently used
            return (-next_use.get(name, math.inf), self._slots[name].last_used)

        def idle(name: str, s: _Slot) -> bool:
            in_tier = s.handle is not None if tier is Tier.ACTIVE else (s.staged is not None and s.handle is None)
            return name != exclude and in_tier and s.in_flight == 0 and s.moving is None

        candidates = [n for n, s in self._slots.items() if idle(n, s)]
        young = [n for n in candidates if now - self._slots[n].active_since < self.min_residency_s]
        chosen: list[str] = []
        free = budget - used
        for name in sorted((n for n in candidates if n not in young), key=order) + sorted(young, key=order):
            if free >= need:
                break
            chosen.append(name)
            free += self._slots[name].footprint if tier is Tier.ACTIVE else self._slots[name].nbytes
        return chosen if free >= need else None

    async def _reserve(self, name: str, slot: _Slot) -> bool:
        """Start a move of ``name`` to ACTIVE if room can be made (else wait for a release)."""
        await self._measure(name, slot)
        if slot.handle is not None or slot.moving is not None:
            return False  # someone else moved it while we measured; the caller loops
        victims = self._victims(name, Tier.ACTIVE, slot.footprint, self.used_bytes(), self.budget_bytes)
        if victims is None:
            await self._condition.wait()  # every resident expert is busy: wait for a release
            return False
        slot.moving = asyncio.get_running_loop().create_future()
        slot.moving.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        return True

    async def preload(self, name: str) -> bool:
        """Start moving ``name`` to ACTIVE ahead of its requests (while another expert runs), if
        room can be made without evicting anything busy or needed sooner; True if started."""
        slot = self._slots[name]
        async with self._condition:
            if slot.handle is not None or slot.moving is not None or time.monotonic() < slot.backoff_until:
                return False
            try:
                await self._measure(name, slot)
            except CoserveError:
                return False
            if slot.handle is not None or slot.moving is not None:
                return False
            mine = self.next_use().get(name, math.inf)
            victims = self._victims(name, Tier.ACTIVE, slot.footprint, self.used_bytes(), self.budget_bytes)
            if victims is None or any(self.next_use().get(v, math.inf) <= mine for v in victims):
                return False
            slot.moving = asyncio.get_running_loop().create_future()
            slot.moving.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
            self._spawn(self._activate(name, slot, ahead=True))
            return True

    async def _activate(self, name: str, slot: _Slot, ahead: bool = False) -> None:
        """Phase 1: stage (if on DISK) and load, outside the lock. Phase 2: evict to fit, publish."""
        spec = self.library.expert(name)
        backend = self.backends[name]
        loop = asyncio.get_running_loop()
        assert slot.moving is not None
        moving = slot.moving
        start = time.monotonic()
        from_tier = slot.tier
        try:
            if slot.staged is None:
                slot.staged = await loop.run_in_executor(self.executor, backend.stage, spec, self.base)
                self.bytes_moved += slot.nbytes
            handle = await loop.run_in_executor(self.executor, backend.load, spec, self.base)
        except Exception as exc:
            async with self._condition:
                slot.moving = None
                moving.set_exception(self._failed(name, slot, exc))
                self._condition.notify_all()
            return
        async with self._condition:
            seconds = time.monotonic() - start
            slot.handle, slot.moving = handle, None
            slot.backoff_s = slot.backoff_until = 0.0
            slot.last_error = ""
            slot.last_used = slot.active_since = time.monotonic()
            self.bytes_moved += slot.nbytes
            self.switch_seconds.append(seconds)
            moving.set_result(None)
            self._count("loads", name)
            self._count("preloads" if ahead else "misses", name)
            if self.metrics:
                self.metrics.pool_load_seconds.labels(name).observe(seconds)
                self.metrics.switch_seconds.labels(from_tier.value).observe(seconds)
            self._fit_budgets(protect=name)  # the waiters pin it next; never evict it before they can
            self._condition.notify_all()

    def _failed(self, name: str, slot: _Slot, exc: BaseException) -> CoserveError:
        """Record a failed move (backoff, doubling); returns the error to raise: an ExpertLoadError
        (503: the server is fine, this expert is not), whatever the cause (a corrupt or missing
        file, a hash mismatch, the runtime's own failure)."""
        error = (
            exc
            if isinstance(exc, ExpertLoadError)
            else ExpertLoadError(
                str(getattr(exc, "message", exc)) if isinstance(exc, CoserveError) else f"expert {name!r}: {exc}"
            )
        )
        slot.backoff_s = min(BACKOFF_MAX_S, slot.backoff_s * 2 if slot.backoff_s else BACKOFF_START_S)
        slot.backoff_until = time.monotonic() + slot.backoff_s
        slot.last_error = str(getattr(error, "message", error))
        self._count("load_failures", name)
        return error

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fit_budgets(self, protect: str = "") -> None:
        """Evict idle experts (lookahead order) until both tiers are within budget, if possible."""
        victims = self._victims(protect, Tier.ACTIVE, 0, self.used_bytes(), self.budget_bytes) or []
        for victim in victims:
            self._deactivate(victim)
        victims = self._victims(protect, Tier.RAM, 0, self.ram_bytes(), self.ram_budget_bytes) or []
        for victim in victims:
            self._unstage(victim)
        self._publish()

    def _deactivate(self, name: str) -> None:
        slot = self._slots[name]
        assert slot.handle is not None and slot.in_flight == 0, "never evict an expert with work in flight"
        handle, slot.handle = slot.handle, None
        self.backends[name].unload(handle)
        self._count("evictions", name)

    def _unstage(self, name: str) -> None:
        slot = self._slots[name]
        if slot.staged is not None and slot.handle is None:
            staged, slot.staged = slot.staged, None
            self.backends[name].unstage(staged)

    def _release(self, name: str) -> None:
        slot = self._slots[name]
        slot.in_flight -= 1
        slot.last_used = time.monotonic()
        cond = self._condition

        async def settle() -> None:
            async with cond:
                self._fit_budgets()  # a load may have overshot while this expert was busy
                cond.notify_all()

        self._spawn(settle())

    def evict_when_idle(self, name: str) -> None:
        """Move an expert back to DISK as soon as it has no work in flight (load-per-request policy)."""
        slot = self._slots[name]
        cond = self._condition

        async def evict() -> None:
            async with cond:
                if slot.handle is not None and slot.in_flight == 0 and slot.moving is None:
                    self._deactivate(name)
                    self._unstage(name)
                    self._publish()
                cond.notify_all()

        self._spawn(evict())

    # -- prefetch -------------------------------------------------------------------------------
    async def prefetch(self, name: str) -> None:
        """Bring ``name`` DISK -> RAM if the RAM budget has room without evicting anything needed sooner."""
        slot = self._slots[name]
        async with self._condition:
            if slot.tier is not Tier.DISK or slot.moving is not None or time.monotonic() < slot.backoff_until:
                return
            try:
                await self._measure(name, slot)
            except CoserveError:
                return
            mine = self.next_use().get(name, math.inf)
            victims = self._victims(name, Tier.RAM, slot.nbytes, self.ram_bytes(), self.ram_budget_bytes)
            if victims is None or any(self.next_use().get(v, math.inf) <= mine for v in victims):
                return
            for victim in victims:
                self._unstage(victim)
            slot.moving = asyncio.get_running_loop().create_future()
        moving = slot.moving
        spec = self.library.expert(name)
        try:
            staged = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.backends[name].stage, spec, self.base
            )
        except Exception:
            staged = None
        async with self._condition:
            slot.staged = staged if staged is not None else slot.staged
            if staged is not None:
                self.bytes_moved += slot.nbytes
                self._count("prefetches", name)
            slot.moving = None
            moving.set_result(None)
            self._publish()
            self._condition.notify_all()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _count(self, what: str, name: str) -> None:
        if self.metrics:
            getattr(self.metrics, f"pool_{what}").labels(name).inc()

    def _publish(self) -> None:
        if self.metrics:
            for expert, tier in self.residency().items():
                for t in Tier:
                    self.metrics.pool_resident.labels(expert, t.value).set(1 if tier is t else 0)
            self.metrics.pool_bytes.labels("active").set(self.used_bytes())
            self.metrics.pool_bytes.labels("ram").set(self.ram_bytes())
            self.metrics.bytes_moved.set(self.bytes_moved)

    async def close(self) -> None:
        """Unload and unstage every expert (on shutdown)."""
        async with self._condition:
            for name, slot in self._slots.items():
                if slot.handle is not None:
                    handle, slot.handle = slot.handle, None
                    self.backends[name].unload(handle)
                self._unstage(name)
