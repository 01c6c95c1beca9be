"""The engine under random sequences of operations (hypothesis, stateful).

A ``RuleBasedStateMachine`` drives one ``Engine`` (the real scheduler and pool, fake experts whose
footprints make the ACTIVE budget hold one or two of them) through requests for random experts
with random fallback alternatives, streamed or collected; callers that go away while queued or
while generating; stagings, loads and generations that finish, fail before their first token or
crash after it, in any order (tests/gated.py); pins; and a clock that passes wait bounds and
backoffs. After every step the engine is checked against what docs/serving.md promises; at the
end everything is drained: every request must have ended exactly once (an answer from an expert
it could go to, a clear error, or its cancellation), and the engine's gauges are back at rest.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import MiB, write_library
from gated import CLOCK, GatedMachine, assert_bookkeeping, machine_settings, run_machine
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from coserve.backends.base import Backend
from coserve.config import LibraryConfig, load_library
from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.engine.pool import ExpertPool
from coserve.errors import ExpertFailed, ExpertLoadError
from coserve.metrics import Metrics
from coserve.types import Decision, Message, Request, Sampling

EXPERTS = ("small", "coder", "big")
SIZES = {"small": (10, 15, 2), "coder": (20, 25, 1), "big": (30, 40, 2)}  # MiB weights, MiB footprint, slots
SETTINGS = machine_settings(max_examples=40, steps=30)


class Outcome:
    """One submitted request: its call, its task, and whether its caller went away."""

    def __init__(self, call: Call, task: asyncio.Task[str], candidates: tuple[str, ...]):
        self.call, self.task, self.candidates = call, task, candidates
        self.cancelled = False


class EngineMachine(GatedMachine):
    """One engine over three fake experts; requests, faults and departures in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None
        self.requests: list[Outcome] = []
        self.peak_running = 0

    @initialize(
        active=st.sampled_from([45, 60, 90]),
        residency=st.sampled_from(["lookahead", "lookahead", "lru", "load_per_request"]),
        cut=st.booleans(),
    )
    def build(self, active: int, residency: Any, cut: bool) -> None:
        self.cut = cut  # the end: a shutdown that cuts what still runs, else a drain
        metrics = Metrics()
        backends: dict[str, Backend] = dict.fromkeys(EXPERTS, self.backend)
        pool = ExpertPool(self.library, backends, active * MiB, self.executor, metrics, 1024 * MiB)
        self.engine = Engine(self.library, None, pool, metrics, self.executor, residency)  # type: ignore[arg-type]

    @property
    def e(self) -> Engine:
        assert self.engine is not None
        return self.engine

    # -- rules ----------------------------------------------------------------------------------
    @rule(
        expert=st.sampled_from(EXPERTS),
        alternatives=st.lists(st.sampled_from(EXPERTS), max_size=2, unique=True),
        streamed=st.booleans(),
    )
    def submit(self, expert: str, alternatives: list[str], streamed: bool) -> None:
        others = tuple(a for a in alternatives if a != expert)
        request = Request((Message("user", f"question {len(self.requests)}"),), expert, Sampling(max_tokens=3))
        call = Call(request, decision=Decision(expert, None, 1.0, others, "pinned"))
        self.requests.append(Outcome(call, self.loop.create_task(self._serve(call, streamed)), (expert, *others)))
        self._settle()

    async def _serve(self, call: Call, streamed: bool) -> str:
        if streamed:
            return "".join([chunk.text async for chunk in await self.e.stream_one(call)])
        return (await self.e.complete_one(call)).text

    @precondition(lambda self: any(not r.task.done() for r in self.requests))
    @rule(pick=st.integers(0, 99))
    def caller_goes_away(self, pick: int) -> None:
        live = [r for r in self.requests if not r.task.done()]
        outcome = live[pick % len(live)]
        outcome.cancelled = True
        outcome.task.cancel()
        self._settle()

    @precondition(lambda self: self.executor.gated())
    @rule(pick=st.integers(0, 99), fault=st.sampled_from([None, None, None, "before", "mid"]))
    def runtime_step(self, pick: int, fault: str | None) -> None:
        jobs = self.executor.gated()
        jobs[pick % len(jobs)].finish(fault)
        self._settle()

    @rule(expert=st.sampled_from(EXPERTS), pinned=st.booleans())
    def pin(self, expert: str, pinned: bool) -> None:
        async def call() -> None:
            self.e.pool.pin(expert, pinned)

        self.loop.run_until_complete(call())
        self._settle()

    @rule(seconds=st.sampled_from([1.0, 11.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        CLOCK.now += seconds
        self.loop.run_until_complete(self._wake())
        self._settle()

    async def _wake(self) -> None:
        if self.e._wake is not None:
            self.e._wake.set()  # what the next arrival or release would do

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def pool_matches_the_backend(self) -> None:
        if self.engine is not None:
            assert_bookkeeping(self.e.pool, self.backend)
            assert self.backend.streams_on_dead == [], "a runtime was unloaded under a running request"

    @invariant()
    def one_expert_executes_at_a_time_within_its_slots(self) -> None:
        if self.engine is None:
            return
        running = [name for name in EXPERTS if self.e.pool.in_flight(name) > 0]
        assert len(running) <= 1, f"experts executing at once: {running}"
        for name in EXPERTS:
            assert self.e.pool.in_flight(name) <= self.e.slots(name), name

    @invariant()
    def queue_gauges_count_the_queues(self) -> None:
        if self.engine is None:
            return
        depth = self.e.scheduler.depth()
        for name in EXPERTS:  # taken from the queue, a request still waits while its expert loads
            queued = sum(r.call.expert == name and r.call.status == "queued" for r in self.requests)
            gauge = self.e.metrics.registry.get_sample_value("coserve_queue_depth", {"expert": name}) or 0.0
            assert depth.get(name, 0) <= gauge <= queued, f"{name}: gauge {gauge}, {depth.get(name, 0)} in its queue"

    @invariant()
    def requests_end_once_and_well(self) -> None:
        for outcome in self.requests:
            if outcome.task.done():
                self._check_end(outcome)

    def _check_end(self, outcome: Outcome) -> None:
        task, call = outcome.task, outcome.call
        if task.cancelled():
            assert outcome.cancelled, f"{call.id} was cancelled though its caller stayed"
            return
        error = task.exception()
        if error is not None:
            assert isinstance(error, (ExpertLoadError, ExpertFailed)), f"{call.id} raised {error!r}"
            return
        assert call.expert in outcome.candidates
        assert task.result().startswith(f"{call.expert} says:"), (call.expert, task.result())

    # -- the end --------------------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            if self.engine is not None:
                self._cut() if self.cut else self._drain()
        finally:
            self._close_loop([r.task for r in self.requests])

    def _cut(self) -> None:
        """Shut down as the server does past its drain deadline: cancel every request, let the
        cancellations settle, close the engine; the runtime calls still in their threads then end.
        No runtime may be unloaded under one of them, and none may stay loaded after."""
        for outcome in self.requests:
            outcome.cancelled = True
            outcome.task.cancel()
        self._settle()
        self.loop.run_until_complete(self.e.close())
        for _ in range(20):
            for job in self.executor.gated():
                job.finish()
            self._settle()
        assert self.backend.streams_on_dead == [], "the shutdown unloaded a runtime under a running request"
        assert self.backend.live_handles == set(), "a runtime stayed loaded after the engine closed"
        assert self.backend.live_staged == set(), "a staged expert stayed in RAM after the engine closed"

    def _drain(self) -> None:
        """Let every runtime call finish: every request ends, and the engine is at rest."""
        for name in EXPERTS:
            self.pin(name, False)
        stalled = 0  # rounds with no runtime call to finish: three of them and the rest hangs
        while stalled < 3 and (self.executor.gated() or not all(r.task.done() for r in self.requests)):
            CLOCK.now += 61.0  # past any wait bound and backoff
            self.loop.run_until_complete(self._wake())
            jobs = self.executor.gated()
            for job in jobs:
                job.finish()
            self._settle()
            stalled = 0 if jobs else stalled + 1
        hanging = [r.call.id for r in self.requests if not r.task.done()]
        assert not hanging, f"requests never ended: {hanging}"
        self.requests_end_once_and_well()
        pool = self.e.pool
        assert all(pool.in_flight(name) == 0 for name in EXPERTS)
        assert self.e.scheduler.pending() == 0
        for name in EXPERTS:
            assert not self.e.metrics.registry.get_sample_value("coserve_queue_depth", {"expert": name}), name
        assert pool.used_bytes() <= pool.budget_bytes
        self.loop.run_until_complete(self.e.close())
        assert self.backend.live_handles == set() and self.backend.live_staged == set()


@pytest.fixture
def library(tmp_path: Path) -> LibraryConfig:
    options = {
        name: {"nbytes": w * MiB, "footprint": f * MiB, "n_parallel": slots} for name, (w, f, slots) in SIZES.items()
    }
    return load_library(write_library(tmp_path, options=options))


def test_engine_keeps_its_promises_under_random_operations(library: LibraryConfig) -> None:
    run_machine(EngineMachine, library, SETTINGS)
