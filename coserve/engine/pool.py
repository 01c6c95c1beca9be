"""The expert pool: each expert in one of three tiers under a byte budget per tier.

    DISK    the model file only
    RAM     the weights held in host memory: what ``Backend.stage`` returned (the pool keeps it)
    ACTIVE  a runtime ``Backend.load`` built from that staged object

One verb per move (coserve.backends.base): stage DISK -> RAM, load RAM -> ACTIVE, unload
ACTIVE -> RAM, unstage RAM -> DISK.

The RAM budget counts weights (``Backend.nbytes``) of every expert not on DISK, loaded ones too; the
ACTIVE budget counts each loaded runtime's whole footprint (``Backend.footprint``: weights plus KV
caches, compute buffers and repacked copies), so it bounds what loaded experts really hold. An expert
over either budget alone is never loaded (coserve.engine.budgets).

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
from pathlib import Path
from typing import Any

from coserve.backends.base import Backend
from coserve.config import LibraryConfig
from coserve.engine.budgets import over_budget
from coserve.engine.residency import Candidate, Entry, Lease, choose_victims, load_error
from coserve.errors import CoserveError, ExpertLoadError
from coserve.metrics import Metrics
from coserve.types import Tier

__all__ = ["ExpertPool", "Lease"]


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
        self._entries = {name: Entry() for name in library.expert_names}
        self._cond: asyncio.Condition | None = None
        self.next_use: Callable[[], Mapping[str, float]] = dict  # lookahead source (the scheduler's)
        self._tasks: set[asyncio.Task[None]] = set()  # background moves and settles, kept referenced
        self.switch_seconds: list[float] = []  # DISK/RAM -> ACTIVE move times, for benchmarks
        self.bytes_moved = 0
        self.closed = False  # shutting down: nothing new loads, and what is busy is freed once idle

    @property
    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # created lazily, inside the running loop
            self._cond = asyncio.Condition()
        return self._cond

    def note_unavailable(self, name: str, message: str) -> None:
        """Why an expert cannot load (found at start: a missing file), for /health; its requests still try it."""
        self._entries[name].last_error = message

    def rebind(self) -> None:
        """Forget loop-bound primitives (the engine moved to a new event loop); state is kept."""
        self._cond = None
        self._tasks = set()

    # -- queries --------------------------------------------------------------------------------
    def residency(self) -> dict[str, Tier]:
        return {name: entry.tier for name, entry in self._entries.items()}

    def used_bytes(self) -> int:
        """Bytes in the ACTIVE tier, loads in progress included."""
        return sum(s.footprint for s in self._entries.values() if s.handle is not None or s.moving is not None)

    def ram_bytes(self) -> int:
        """Bytes held in host memory (RAM and ACTIVE tiers)."""
        return sum(s.nbytes for s in self._entries.values() if s.tier is not Tier.DISK or s.moving is not None)

    def in_flight(self, name: str) -> int:
        return self._entries[name].in_flight

    def concurrency(self, name: str) -> int:
        """Requests of the expert its backend runs at once (its declared concurrency)."""
        return self.backends[name].concurrency(self.library.expert(name))

    def state(self, name: str) -> dict[str, Any]:
        return self._entries[name].state()

    def pin(self, name: str, pinned: bool = True) -> None:
        """Keep ``name`` out of every eviction once ACTIVE (or let it go again); loads are the caller's."""
        self._entries[name].pinned = pinned
        if not pinned and self._cond is not None:  # it may be the room a waiting load needs
            self._spawn(self._settle())

    # -- acquire / release ----------------------------------------------------------------------
    async def acquire(self, name: str) -> Lease:
        """Pin the expert in the ACTIVE tier, moving it there first if needed."""
        entry = self._entries[name]
        cond = self._condition
        waited = False  # a request that waited for a move is a miss, not a hit
        async with cond:
            while True:
                if self.closed:
                    raise ExpertLoadError(f"expert {name!r}: the server is shutting down", code="draining")
                if entry.handle is not None:
                    entry.in_flight += 1
                    entry.last_used = time.monotonic()
                    if not waited:
                        self._count("hits", name)
                    return Lease(entry.handle, lambda: self._release(name))
                if entry.moving is not None:
                    waited = True
                    moving = entry.moving
                    await self._wait_for(moving, entry)
                    if not moving.cancelled() and moving.exception() is not None:
                        raise moving.exception()  # type: ignore[misc]  # the move this caller waited for failed
                    continue
                if time.monotonic() < entry.backoff_until:
                    raise ExpertLoadError(
                        f"expert {name!r} is in backoff after a failed load ({entry.last_error})", code="expert_backoff"
                    )
                if await self._reserve(name, entry):
                    # The move runs as a task of its own: a caller that goes away while waiting
                    # cancels only its wait, never the load that others may be waiting for.
                    self._spawn(self._load(name, entry))

    async def _wait_for(self, future: asyncio.Future[None], entry: Entry) -> None:
        """Wait for ``entry``'s move, releasing the condition meanwhile; counted in ``entry.waiting``
        until the caller holds the condition again (and so pins it before any victim is chosen)."""
        cond = self._condition
        cond.release()
        entry.waiting += 1
        try:
            await asyncio.shield(future)
        except CoserveError:
            pass  # the mover's failure sets backoff; the caller's loop reports it
        finally:
            try:
                await cond.acquire()
            finally:
                entry.waiting -= 1

    async def _measure(self, name: str, entry: Entry) -> None:
        if not entry.footprint:
            spec = self.library.expert(name)
            backend = self.backends[name]
            loop = asyncio.get_running_loop()
            try:
                entry.nbytes = await loop.run_in_executor(self.executor, backend.nbytes, spec, self.base)
                entry.footprint = await loop.run_in_executor(self.executor, backend.footprint, spec, self.base)
            except Exception as exc:  # a missing or unreadable file: as a failed load
                entry.nbytes = entry.footprint = 0
                raise self._failed(name, entry, exc) from None
        if problem := over_budget(name, entry.nbytes, entry.footprint, self.ram_budget_bytes, self.budget_bytes):
            raise ExpertLoadError(problem)  # weights over ``ram`` or footprint over ``active``: never loadable

    def _victims(
        self, exclude: str, tier: Tier, need: int, used: int, budget: int, partial: bool = False
    ) -> list[str] | None:
        """Idle experts to move out of ``tier`` so ``need`` bytes fit; None if impossible (``partial``: all)."""
        candidates = {
            name: Candidate(e.footprint if tier is Tier.ACTIVE else e.nbytes, e.last_used, e.active_since)
            for name, e in self._entries.items()
            if name != exclude
            and e.in_flight == 0
            and not ((e.pinned or e.waiting) and tier is Tier.ACTIVE)  # pinned, or requests wait to pin it
            and e.moving is None
            and (e.handle is not None if tier is Tier.ACTIVE else (e.staged is not None and e.handle is None))
        }
        now = time.monotonic()
        return choose_victims(candidates, need, budget - used, self.next_use(), now, self.min_residency_s, partial)

    async def _reserve(self, name: str, entry: Entry) -> bool:
        """Start a move of ``name`` to ACTIVE if room can be made (else wait for a release)."""
        await self._measure(name, entry)
        if entry.handle is not None or entry.moving is not None:
            return False  # someone else moved it while we measured; the caller loops
        victims = self._victims(name, Tier.ACTIVE, entry.footprint, self.used_bytes(), self.budget_bytes)
        if victims is None:
            await self._condition.wait()  # every resident expert is busy: wait for a release
            return False
        self._start_move(entry)
        return True

    @staticmethod
    def _start_move(entry: Entry) -> asyncio.Future[None]:
        entry.moving = asyncio.get_running_loop().create_future()
        entry.moving.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        return entry.moving

    async def _room_ahead(self, name: str, entry: Entry, tier: Tier) -> list[str] | None:
        """Victims that make room for ``name`` in ``tier`` ahead of its requests, none of them busy
        or needed sooner than it; None where there is no such room or the expert cannot be measured."""
        try:
            await self._measure(name, entry)
        except CoserveError:
            return None
        if tier is Tier.ACTIVE:
            victims = self._victims(name, tier, entry.footprint, self.used_bytes(), self.budget_bytes)
        else:
            victims = self._victims(name, tier, entry.nbytes, self.ram_bytes(), self.ram_budget_bytes)
        mine = self.next_use().get(name, math.inf)
        if victims is None or any(self.next_use().get(v, math.inf) <= mine for v in victims):
            return None
        return victims

    async def preload(self, name: str) -> bool:
        """Start moving ``name`` to ACTIVE ahead of its requests (while another expert runs), if
        room can be made without evicting anything busy or needed sooner; True if started."""
        entry = self._entries[name]
        async with self._condition:
            if entry.handle is not None or entry.moving is not None or time.monotonic() < entry.backoff_until:
                return False
            if await self._room_ahead(name, entry, Tier.ACTIVE) is None:
                return False
            self._start_move(entry)
            self._spawn(self._load(name, entry, ahead=True))
            return True

    async def _load(self, name: str, entry: Entry, ahead: bool = False) -> None:
        """Phase 1: stage (if on DISK) and load, outside the lock. Phase 2: evict to fit, publish."""
        spec = self.library.expert(name)
        backend = self.backends[name]
        loop = asyncio.get_running_loop()
        assert entry.moving is not None
        moving = entry.moving
        start = time.monotonic()
        from_tier = entry.tier
        try:
            if entry.staged is None:
                entry.staged = await loop.run_in_executor(self.executor, backend.stage, spec, self.base)
                self.bytes_moved += entry.nbytes
            handle = await loop.run_in_executor(self.executor, backend.load, spec, entry.staged)
        except Exception as exc:
            async with self._condition:
                entry.moving = None
                moving.set_exception(self._failed(name, entry, exc))
                self._fit_budgets()  # its staged file may stay in RAM only where the RAM budget allows
                self._condition.notify_all()
            return
        async with self._condition:
            seconds = time.monotonic() - start
            entry.handle, entry.moving = handle, None
            entry.backoff_s = entry.backoff_until = 0.0
            entry.last_error = ""
            entry.last_used = entry.active_since = time.monotonic()
            self.bytes_moved += entry.nbytes
            self.switch_seconds.append(seconds)
            moving.set_result(None)
            self._count("loads", name)
            self._count("preloads" if ahead else "misses", name)
            if self.metrics:
                self.metrics.pool_load_seconds.labels(name).observe(seconds)
                self.metrics.switch_seconds.labels(from_tier.value).observe(seconds)
            self._fit_budgets()  # its waiters (``entry.waiting``) pin it next: no victim before they can
            self._condition.notify_all()

    def _failed(self, name: str, entry: Entry, exc: BaseException) -> CoserveError:
        """Record a failed move (backoff, doubling); returns the error to raise (residency.load_error)."""
        error = load_error(name, exc)
        entry.back_off(error.message)
        self._count("load_failures", name)
        return error

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fit_budgets(self) -> None:
        """Evict idle experts (lookahead order) until both tiers are within budget, or all that help
        where busy ones keep a tier over it; once closed, free every expert with nothing in progress."""
        for name, entry in self._entries.items():
            if self.closed and entry.in_flight == 0 and entry.moving is None:
                if entry.handle is not None:
                    self._unload(name)
                self._unstage(name)
        for victim in self._victims("", Tier.ACTIVE, 0, self.used_bytes(), self.budget_bytes, partial=True) or []:
            self._unload(victim)
        for victim in self._victims("", Tier.RAM, 0, self.ram_bytes(), self.ram_budget_bytes, partial=True) or []:
            self._unstage(victim)
        self._publish()

    def _unload(self, name: str) -> None:
        entry = self._entries[name]
        assert entry.handle is not None and entry.in_flight == 0, "never evict an expert with work in flight"
        handle, entry.handle = entry.handle, None
        self.backends[name].unload(handle)
        self._count("evictions" if not self.closed else "", name)

    def _unstage(self, name: str) -> None:
        entry = self._entries[name]
        if entry.staged is not None and entry.handle is None:
            staged, entry.staged = entry.staged, None
            self.backends[name].unstage(staged)

    def _release(self, name: str) -> None:
        entry = self._entries[name]
        entry.in_flight -= 1
        entry.last_used = time.monotonic()
        self._spawn(self._settle())  # a load may have overshot while this expert was busy

    async def _settle(self) -> None:
        """Fit both tiers to their budgets and wake the loads waiting for room."""
        async with self._condition:
            self._fit_budgets()
            self._condition.notify_all()

    def evict_when_idle(self, name: str) -> None:
        """Move an expert back to DISK as soon as it has no work in flight (load-per-request policy)."""
        entry = self._entries[name]

        async def evict() -> None:
            async with self._condition:
                if entry.handle is not None and entry.in_flight == entry.waiting == 0 and entry.moving is None:
                    self._unload(name)
                    self._unstage(name)
                    self._publish()
                self._condition.notify_all()

        self._spawn(evict())

    # -- prefetch -------------------------------------------------------------------------------
    async def prefetch(self, name: str) -> None:
        """Bring ``name`` DISK -> RAM if the RAM budget has room without evicting anything needed sooner."""
        entry = self._entries[name]
        async with self._condition:
            if entry.tier is not Tier.DISK or entry.moving is not None or time.monotonic() < entry.backoff_until:
                return
            victims = await self._room_ahead(name, entry, Tier.RAM)
            if victims is None:
                return
            for victim in victims:
                self._unstage(victim)
            moving = self._start_move(entry)
        spec = self.library.expert(name)
        try:
            staged = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.backends[name].stage, spec, self.base
            )
        except Exception:  # a failed prefetch is only a missed chance: the load will report it
            staged = None
        async with self._condition:
            entry.staged = staged if staged is not None else entry.staged
            if staged is not None:
                self.bytes_moved += entry.nbytes
                self._count("prefetches", name)
            entry.moving = None
            moving.set_result(None)
            self._fit_budgets()  # after close(): undone at once
            self._condition.notify_all()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _count(self, what: str, name: str) -> None:
        if self.metrics and what:  # "": not counted (a shutdown is no eviction)
            getattr(self.metrics, f"pool_{what}").labels(name).inc()

    def _publish(self) -> None:
        if self.metrics:
            self.metrics.publish_pool(self.residency(), self.used_bytes(), self.ram_bytes(), self.bytes_moved)

    async def close(self) -> None:
        """Unload and unstage every expert (on shutdown); one still generating, loading or staging in
        its worker thread is freed when that ends, never under it. Acquires are refused from now on."""
        async with self._condition:
            self.closed = True
            self._fit_budgets()
            self._condition.notify_all()
