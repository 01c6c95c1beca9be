"""Deterministic parts for the engine's stateful property tests (test_pool_machine, test_engine_machine).

``GatedExecutor`` runs nothing until the test says so: every blocking backend call the pool or the
engine hands to it (stage, load, stream) waits as a ``Job`` that the test finishes, or fails with
the fault a runtime raises, in the order it chooses; quick calls (measuring, prompt counters) run
when the loop is settled. ``TrackingBackend`` is the fake backend (coserve.backends.fake) that
also knows which runtimes and staged objects are alive: the ground truth the pool's bookkeeping is
checked against. ``FakeClock`` stands in for ``time.monotonic`` in the engine's modules, so a
backoff or a wait bound passes when the test moves the clock, not with the machine's speed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from coserve.backends.base import Handle
from coserve.backends.fake import FakeBackend
from coserve.config import ExpertSpec, LibraryConfig
from coserve.engine import engine, pool, residency
from coserve.errors import ExpertFailed, ExpertLoadError

T = TypeVar("T")

GATED = ("stage", "load", "stream")  # backend calls that wait for the test; others run on settle


def machine_settings(max_examples: int, steps: int) -> settings:
    """Derandomized (the same sequences on every run: CI is deterministic) and without a database.
    ``COSERVE_MACHINE_EXAMPLES=N`` runs N random sequences instead: a longer hunt, by hand."""
    hunt = int(os.environ.get("COSERVE_MACHINE_EXAMPLES", "0"))
    return settings(
        max_examples=hunt or max_examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=not hunt,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@dataclass
class Job:
    """One call handed to the executor, not yet run."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: concurrent.futures.Future[Any]

    @property
    def kind(self) -> str:
        return getattr(self.fn, "__name__", "call")

    @property
    def expert(self) -> str:
        spec = self.args[0].spec if self.kind == "stream" else self.args[0]
        return str(getattr(spec, "name", "?"))

    def finish(self, fault: str | None = None) -> None:
        """Run the call and publish its outcome; ``fault``: raise what a runtime raises instead,
        "before" it does anything, or "mid"-stream after its first chunk (a stream only)."""
        if not self.future.set_running_or_notify_cancel():
            return  # cancelled by an executor shutdown
        error = (ExpertFailed if self.kind == "stream" else ExpertLoadError)(
            f"expert {self.expert!r}: injected {self.kind} fault"
        )
        args = self.args
        if fault == "mid" and self.kind == "stream":
            emit = args[-1]
            sent: list[Any] = []

            def crashing(chunk: Any) -> bool:
                if sent:
                    raise error
                sent.append(chunk)
                return bool(emit(chunk))

            args = (*args[:-1], crashing)
        try:
            if fault is not None and not (fault == "mid" and self.kind == "stream"):
                raise error
            result = self.fn(*args)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class GatedExecutor(Executor):
    """An executor whose calls run only when the test finishes them (see the module doc)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        assert not kwargs
        job = Job(fn, args, concurrent.futures.Future())
        self.jobs.append(job)
        return job.future

    def gated(self) -> list[Job]:
        """The calls waiting for the test, oldest first."""
        self.jobs = [j for j in self.jobs if not j.future.done()]
        return [j for j in self.jobs if j.kind in GATED]

    def run_quick(self) -> bool:
        """Run the calls that need no gate; True if any ran."""
        quick = [j for j in self.jobs if j.kind not in GATED and not j.future.done()]
        for job in quick:
            job.finish()
        return bool(quick)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # the test finishes or abandons the jobs itself


def settle(loop: asyncio.AbstractEventLoop, executor: GatedExecutor, rounds: int = 40) -> None:
    """Run the loop until nothing is ready to run but gated calls (a bounded number of passes)."""

    async def spin() -> None:
        idle = 0
        for _ in range(rounds * 10):
            await asyncio.sleep(0)
            idle = 0 if executor.run_quick() else idle + 1
            if idle >= rounds:
                return

    loop.run_until_complete(spin())


class TrackingBackend(FakeBackend):
    """The fake backend, keeping the runtimes and staged objects that are alive (ground truth)."""

    def __init__(self) -> None:
        super().__init__()
        self.live_handles: set[int] = set()  # id() of handles loaded and not unloaded
        self.live_staged: set[int] = set()  # id() of staged objects not unstaged
        self.streams_on_dead: list[str] = []  # experts a stream found unloaded (must stay empty)

    @staticmethod
    def _born(live: set[int], thing: T) -> T:
        live.add(id(thing))
        return thing

    @staticmethod
    def _dies(live: set[int], thing: Any, problem: str) -> None:
        assert id(thing) in live, problem
        live.discard(id(thing))

    def stage(self, spec: ExpertSpec, base: Path | None) -> Any:
        return self._born(self.live_staged, super().stage(spec, base))

    def unstage(self, staged: Any) -> None:
        self._dies(self.live_staged, staged, "unstaged twice or never staged")
        super().unstage(staged)

    def load(self, spec: ExpertSpec, staged: Any) -> Handle:
        assert id(staged) in self.live_staged, "loaded from a staged object that was released"
        return self._born(self.live_handles, super().load(spec, staged))

    def unload(self, handle: Handle) -> None:
        self._dies(self.live_handles, handle, "unloaded twice or never loaded")
        super().unload(handle)

    def stream(self, handle: Handle, *args: Any) -> None:
        if id(handle) not in self.live_handles:
            self.streams_on_dead.append(handle.spec.name)
        super().stream(handle, *args)


def assert_bookkeeping(pool: Any, backend: TrackingBackend) -> None:
    """What the pool holds is exactly what the backend has alive: no leaked runtime or staged file,
    no phantom residency after a failed move; a loaded expert keeps its staged object."""
    entries = pool._entries
    assert {id(e.handle) for e in entries.values() if e.handle is not None} == backend.live_handles
    assert {id(e.staged) for e in entries.values() if e.staged is not None} == backend.live_staged
    for name, entry in entries.items():
        assert entry.handle is None or entry.staged is not None, f"{name}: ACTIVE without its RAM tier"
        assert entry.in_flight >= 0, f"{name}: in_flight {entry.in_flight}"


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@contextlib.contextmanager
def frozen_time(clock: FakeClock) -> Iterator[None]:
    """``time.monotonic`` in the pool, residency and engine modules reads ``clock``."""
    shim = types.SimpleNamespace(monotonic=clock.monotonic, perf_counter=time.perf_counter, time=time.time)
    modules = (pool, residency, engine)
    saved = [m.time for m in modules]  # type: ignore[attr-defined]
    try:
        for module in modules:
            module.time = shim  # type: ignore[attr-defined]
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.time = original  # type: ignore[attr-defined]


CLOCK = FakeClock()  # the machines' clock (one machine runs at a time)


class GatedMachine(RuleBasedStateMachine):
    """A state machine over its own event loop, a gated executor and a tracking backend."""

    library: LibraryConfig  # set by ``run_machine``

    def __init__(self) -> None:
        super().__init__()
        CLOCK.now = 1000.0
        self.loop = asyncio.new_event_loop()
        self.executor = GatedExecutor()
        self.backend = TrackingBackend()

    def _settle(self) -> None:
        settle(self.loop, self.executor)

    def _close_loop(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel what is left, settle, close the loop (the end of every sequence)."""
        for task in tasks:
            task.cancel()
        settle(self.loop, self.executor)
        self.loop.close()


def run_machine(machine: type[GatedMachine], library: LibraryConfig, checks: settings) -> None:
    """Run ``machine`` over ``library`` with the clock frozen in the engine's modules."""
    with frozen_time(CLOCK):
        run_state_machine_as_test(type(machine.__name__, (machine,), {"library": library}), settings=checks)
