"""The expert pool under random sequences of operations (hypothesis, stateful).

A ``RuleBasedStateMachine`` drives one ``ExpertPool`` over three fake experts whose footprints
make the ACTIVE budget hold one or two of them: acquires, releases (twice, too), callers that go
away while waiting, prefetches, loads ahead, pins, evictions when idle, loads and stagings that
finish or fail in any order (tests/gated.py), and a clock that passes backoffs. After every step
the pool's bookkeeping is checked against the backend's own record of what is alive and against
what coserve.engine.pool promises (its module doc, docs/serving.md); at the end everything is
drained and closed, and every caller must have had its answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import MiB, write_library
from gated import CLOCK, GatedMachine, assert_bookkeeping, machine_settings, run_machine, settle
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from coserve.backends.base import Backend
from coserve.config import LibraryConfig, load_library
from coserve.engine.pool import ExpertPool, Lease
from coserve.errors import ExpertLoadError
from coserve.types import Tier

EXPERTS = ("small", "coder", "big")
SIZES = {"small": (10, 15), "coder": (20, 25), "big": (30, 40)}  # MiB: weights, ACTIVE footprint

SETTINGS = machine_settings(max_examples=60, steps=30)

experts = st.sampled_from(EXPERTS)


class PoolMachine(GatedMachine):
    """One pool, three experts, every verb of the pool in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.pool: ExpertPool | None = None
        self.waiting: list[tuple[str, asyncio.Task[Lease]]] = []  # acquires not yet answered
        self.leases: list[tuple[str, Lease]] = []  # held: each pins its expert
        self.released: list[Lease] = []  # released once (a second release must change nothing)
        self.background: list[asyncio.Task[Any]] = []  # prefetches and loads ahead

    @initialize(
        active=st.sampled_from([35, 45, 60, 90]),
        ram=st.sampled_from([30, 60, 1024]),
        min_residency_s=st.sampled_from([0.0, 5.0]),
    )
    def build(self, active: int, ram: int, min_residency_s: float) -> None:
        backends: dict[str, Backend] = dict.fromkeys(EXPERTS, self.backend)
        self.pool = ExpertPool(self.library, backends, active * MiB, self.executor, None, ram * MiB, min_residency_s)

    @property
    def p(self) -> ExpertPool:
        assert self.pool is not None
        return self.pool

    def _on_loop(self, fn: Any, *args: Any) -> None:
        """Call a synchronous verb of the pool from inside the loop (it may spawn tasks), then settle."""

        async def call() -> None:
            fn(*args)

        self.loop.run_until_complete(call())
        self._settle()

    def _settle(self) -> None:
        settle(self.loop, self.executor)
        self._collect()

    def _collect(self) -> None:
        """Take the answers of acquires that finished (a lease, or a clear error)."""
        for name, task in list(self.waiting):
            if not task.done():
                continue
            self.waiting.remove((name, task))
            if task.cancelled():
                continue
            error = task.exception()
            if error is None:
                lease = task.result()
                assert lease.handle.spec.name == name
                self.leases.append((name, lease))
            else:
                assert isinstance(error, ExpertLoadError), f"acquire({name!r}) raised {error!r}"

    # -- rules ----------------------------------------------------------------------------------
    @rule(name=experts)
    def acquire(self, name: str) -> None:
        self.waiting.append((name, self.loop.create_task(self.p.acquire(name))))
        self._settle()

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 99), again=st.booleans())
    def release(self, pick: int, again: bool) -> None:
        _, lease = self.leases.pop(pick % len(self.leases))
        self._on_loop(lease.release)
        if again:
            self._on_loop(lease.release)  # idempotent
        self.released.append(lease)

    @precondition(lambda self: self.released)
    @rule(pick=st.integers(0, 99))
    def release_again(self, pick: int) -> None:
        self._on_loop(self.released[pick % len(self.released)].release)

    @precondition(lambda self: self.waiting)
    @rule(pick=st.integers(0, 99))
    def caller_goes_away(self, pick: int) -> None:
        _, task = self.waiting[pick % len(self.waiting)]
        task.cancel()
        self._settle()

    @precondition(lambda self: self.executor.gated())
    @rule(pick=st.integers(0, 99), fail=st.booleans())
    def move_ends(self, pick: int, fail: bool) -> None:
        jobs = self.executor.gated()
        jobs[pick % len(jobs)].finish("before" if fail else None)
        self._settle()

    @rule(name=experts)
    def prefetch(self, name: str) -> None:
        self.background.append(self.loop.create_task(self.p.prefetch(name)))
        self._settle()

    @rule(name=experts)
    def preload(self, name: str) -> None:
        self.background.append(self.loop.create_task(self.p.preload(name)))
        self._settle()

    @rule(name=experts, pinned=st.booleans())
    def pin(self, name: str, pinned: bool) -> None:
        self._on_loop(self.p.pin, name, pinned)

    @rule(name=experts)
    def evict_when_idle(self, name: str) -> None:
        self._on_loop(self.p.evict_when_idle, name)

    @rule(next_use=st.dictionaries(experts, st.sampled_from([1.0, 2.0, 3.0]), max_size=3))
    def queues_change(self, next_use: dict[str, float]) -> None:
        """What the scheduler's lookahead says (when each expert is next needed; absent: never)."""
        self.p.next_use = lambda: next_use
        self._settle()

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        CLOCK.now += seconds
        self._settle()

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def bookkeeping_matches_the_backend(self) -> None:
        if self.pool is not None:
            assert_bookkeeping(self.pool, self.backend)

    @invariant()
    def leases_pin_live_runtimes(self) -> None:
        """An expert with work in flight is never unloaded under it; in_flight counts the leases."""
        if self.pool is None:
            return
        for name, lease in self.leases:
            assert lease.handle.runtime["alive"], f"{name} was unloaded under a held lease"
            assert self.p._entries[name].handle is lease.handle
        for name in EXPERTS:
            assert self.p.in_flight(name) == sum(n == name for n, _ in self.leases)

    @invariant()
    def single_flight(self) -> None:
        """One move per expert at a time."""
        movers = [job.expert for job in self.executor.gated()]
        assert len(movers) == len(set(movers)), movers

    @invariant()
    def within_budgets(self) -> None:
        """ACTIVE over its budget only while a move is in progress or while busy or pinned experts
        hold it, and then with no idle one beside them; RAM likewise with no idle RAM-only expert."""
        if self.pool is None:
            return
        entries = self.p._entries.values()
        moving = any(e.moving is not None for e in entries)
        loaded = [e for e in entries if e.handle is not None]
        if not moving and self.p.used_bytes() > self.p.budget_bytes:
            idle = [e for e in loaded if e.in_flight == 0 and not e.pinned]
            assert not idle, "an idle expert kept the ACTIVE tier over its budget"
        if not moving and self.p.ram_bytes() > self.p.ram_budget_bytes:
            staged_only = [e for e in entries if e.staged is not None and e.handle is None]
            assert not staged_only, "an idle RAM-only expert kept the RAM tier over its budget"

    @invariant()
    def waiting_only_for_a_reason(self) -> None:
        """A pending acquire waits for its expert's move, or for room only busy or pinned experts hold."""
        if self.pool is None:
            return
        for name, task in self.waiting:
            if task.done():
                continue
            entry = self.p._entries[name]
            if entry.moving is not None:
                continue
            assert entry.handle is None, f"acquire({name!r}) waits though {name} is loaded"
            loaded = [e for n, e in self.p._entries.items() if e.handle is not None and n != name]
            held = sum(e.footprint for e in loaded if e.in_flight > 0 or e.pinned or e.moving is not None)
            moving_in = sum(e.footprint for e in self.p._entries.values() if e.moving is not None and e.handle is None)
            assert held + moving_in + entry.footprint > self.p.budget_bytes, (
                f"acquire({name!r}) waits though evicting idle experts would make room"
            )

    # -- the end --------------------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            if self.pool is not None:
                self._drain()
        finally:
            self._close_loop([t for _, t in self.waiting] + self.background)

    def _drain(self) -> None:
        """Release everything, unpin, let every move finish: every caller gets its answer, and the
        pool is back within its budgets; close() then leaves nothing alive."""
        for name in EXPERTS:
            self._on_loop(self.p.pin, name, False)
        stalled = 0  # rounds with nothing to release or finish: three of them and the rest hangs
        while stalled < 3 and (self.waiting or self.leases or self.executor.gated()):
            busy = bool(self.leases or self.executor.gated())
            for _, lease in self.leases:
                self._on_loop(lease.release)
            self.leases.clear()
            for job in self.executor.gated():
                job.finish()
            self._settle()
            stalled = 0 if busy else stalled + 1
        assert not self.waiting, f"acquires never answered: {[n for n, _ in self.waiting]}"
        assert all(t.done() for t in self.background)
        assert all(self.p.in_flight(name) == 0 for name in EXPERTS)
        assert self.p.used_bytes() <= self.p.budget_bytes
        assert self.p.ram_bytes() <= max(self.p.ram_budget_bytes, self.p.used_bytes())
        self.loop.run_until_complete(self.p.close())
        assert self.backend.live_handles == set() and self.backend.live_staged == set()
        assert set(self.p.residency().values()) == {Tier.DISK}


@pytest.fixture
def library(tmp_path: Path) -> LibraryConfig:
    options = {name: {"nbytes": w * MiB, "footprint": f * MiB} for name, (w, f) in SIZES.items()}
    return load_library(write_library(tmp_path, options=options))


def test_pool_keeps_its_promises_under_random_operations(library: LibraryConfig) -> None:
    run_machine(PoolMachine, library, SETTINGS)
