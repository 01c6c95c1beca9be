"""The engine: route, schedule, load, execute, answer — with fallback when an expert fails.

    route     -> call.decision (router, in a worker thread: embedding is CPU work)
    schedule  -> the call joins its expert's queue; the dispatcher picks which expert runs
                 next (stay on the running one, else a loaded one, bounded wait for the rest)
                 and starts up to ``slots`` calls of it at a time (continuous batching)
    load      -> pool.acquire(expert) -> call.lease: ACTIVE and pinned; the next expert is loaded while the
                 running one drains when both fit the ACTIVE budget, else prefetched to RAM
    execute   -> backend.stream(...) in a worker thread, chunks handed to the event loop
    answer    -> chunks to the caller; a failure before the first token moves the call to the
                 next expert in the Decision's alternatives (``call.tried`` records the path);
                 ``routing.mode: cascade`` checks answers and may ask a stronger expert (cascade.py)

Every stage writes on the request's one ``Call`` (coserve.engine.call): its decision, the expert
answering, the experts tried, the lease, the usage and the timings. Only one expert executes at a
time: on a CPU the experts share the same cores, so running two at once only makes both slower,
while serving one expert's queue as a batch avoids switches. Non-streamed requests are the same
stream, collected. The engine knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coserve.assets import missing_files
from coserve.backends.base import Backend
from coserve.backends.tool_calls import joined_calls
from coserve.config import LibraryConfig
from coserve.engine.assemble import assemble
from coserve.engine.budgets import check_budgets
from coserve.engine.call import Call
from coserve.engine.cascade import Cascade
from coserve.engine.fit import PromptFit
from coserve.engine.pool import ExpertPool, Lease
from coserve.engine.scheduler import Scheduler
from coserve.engine.threaded import stream_in_thread
from coserve.errors import AssetError, ContextTooLong, ExpertFailed, ExpertLoadError, ServiceError
from coserve.metrics import Metrics
from coserve.router.embed import Embedder
from coserve.router.router import CoERouter
from coserve.types import ROUTED_MODEL, Chunk, Completion, Decision, Tier, TokenLogprob, ToolCallDelta, Usage

if TYPE_CHECKING:
    from coserve.router.online_live import LiveOnline

# How experts are ordered and kept resident: "lookahead" is coserve's, the others baselines for benchmarks.
Residency = Literal["lookahead", "lru", "load_per_request"]

NO_ROUTER = "no_router"  # the error code of a routing call to an engine built without a router

__all__ = ["NO_ROUTER", "Engine", "Residency", "prepended"]


class Engine:
    """Routes, schedules and executes requests over one library."""

    def __init__(
        self,
        library: LibraryConfig,
        router: CoERouter | None,
        pool: ExpertPool,
        metrics: Metrics,
        executor: ThreadPoolExecutor,
        residency: Residency = "lookahead",
    ):
        self.library = library
        self._router = router  # None: built without one (``router`` then refuses)
        self.pool = pool
        self.metrics = metrics
        self.executor = executor
        self.residency = residency
        # "lru" and "load_per_request" serve strictly in arrival order and evict by recency only;
        # "lookahead" batches by expert (turns, bounded wait), prefetches and evicts by next use.
        self.scheduler = Scheduler(max_wait_s=library.memory.max_wait_s, arrival_order=residency != "lookahead")
        if residency == "lookahead":
            pool.next_use = self.scheduler.next_use
        self.cascade = Cascade.from_library(library)  # routing.mode: cascade, else None
        self.fit = PromptFit(pool, executor)  # prompts too long for an expert, known before loading it
        self.unavailable: dict[str, str] = {}  # expert -> why it cannot load: no model file, over a budget (at start)
        self.memory_warning: str | None = None  # the budgets' problem short of that (coserve.engine.budgets)
        self.switches = 0  # times the running expert changed
        self._running: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the dispatcher runs on
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def build(
        cls,
        library: LibraryConfig,
        cache: Path,
        embedder: Embedder | None = None,
        backends: dict[str, Backend] | None = None,
        metrics: Metrics | None = None,
        residency: Residency = "lookahead",
        *,
        routed: bool = True,
    ) -> Engine:
        """Train or load the router, create one backend per backend name, and the pool (assemble.py).
        ``routed=False``: no router (an expert host runs calls an ingress routed; ``route`` refuses)."""
        parts = assemble(library, cache, embedder, backends, metrics, routed=routed)
        engine = cls(parts.library, parts.router, parts.pool, parts.metrics, parts.executor, residency)
        never, engine.memory_warning = check_budgets(parts.library, parts.pool.backends)
        for name, problem in {**missing_files(parts.library), **never}.items():
            parts.pool.note_unavailable(name, problem)
            engine.unavailable[name] = problem
        return engine

    @property
    def router(self) -> CoERouter:
        """The router; ServiceError ``no_router`` on an engine built without one."""
        if self._router is None:
            raise ServiceError(
                "this engine was built without a router: it serves calls already routed "
                "(an expert host), it cannot route one",
                code=NO_ROUTER,
            )
        return self._router

    @property
    def online(self) -> LiveOnline | None:
        """The router's learning from traffic (None without it, or without a router)."""
        return None if self._router is None else self._router.online

    def slots(self, expert: str) -> int:
        """Requests of one expert that run together: the concurrency its backend declares."""
        return 1 if self.residency == "load_per_request" else self.pool.concurrency(expert)  # 1: one per load

    # -- scheduling -----------------------------------------------------------------------------
    def _ensure_dispatcher(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (asyncio.run called again)
            self._loop, self._wake, self._dispatcher = loop, None, None
            self.pool.rebind()
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        return self._wake

    async def _enqueue(self, call: Call) -> Lease:
        """Queue the call for ``call.expert``; returns once the dispatcher put a pinned expert on it."""
        wake = self._ensure_dispatcher()
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call.started, call.lease, call.status, call.queued_at = started, None, "queued", time.monotonic()
        self.scheduler.submit(call)
        self.metrics.queue_depth.labels(str(call.expert)).inc()
        wake.set()
        try:
            await started
        except asyncio.CancelledError:
            call.cancelled = True  # the caller went away while queued
            if self.scheduler.withdraw(call):  # not taken yet: no longer counted as queued
                self.metrics.queue_depth.labels(str(call.expert)).dec()
            if call.lease is not None:
                call.lease.release()
            raise
        assert call.lease is not None
        call.status = "running"
        return call.lease

    async def _dispatch(self) -> None:
        """Pick the next expert, load it, start its queued requests in free slots; repeat."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (pick := self.scheduler.pick(self._running, self._active(), time.monotonic())) is not None:
                expert = pick.expert
                running = self._running
                if running is not None and running != expert and self.pool.in_flight(running) > 0:
                    # switching: let the running expert drain; meanwhile load the next one if it
                    # fits beside it, else at least bring its file into RAM
                    self._prefetch(expert, active=True)
                    break
                free = self.slots(expert) - self.pool.in_flight(expert)
                if free <= 0:
                    break
                if expert != running:
                    self.switches += 1
                self._running = expert
                for nxt in pick.upcoming[:1]:
                    self._prefetch(nxt)
                await self._start(expert, self.scheduler.take(expert, free))

    async def _start(self, expert: str, calls: list[Call]) -> None:
        for position, call in enumerate(calls):
            self.metrics.queue_depth.labels(expert).dec()
            started = call.started
            if started is None or started.done():
                continue
            try:
                lease = await self.pool.acquire(expert)
            except Exception as exc:  # whatever stops a load must reach the waiting requests
                if not isinstance(exc, (ExpertLoadError, AssetError)):
                    exc = ExpertLoadError(f"expert {expert!r} could not be made ready: {exc}")
                # This expert cannot run now: fail this batch and its queued requests, so they fall back.
                queued = self.scheduler.take(expert, 10**9)
                for _ in [*calls[position + 1 :], *queued]:
                    self.metrics.queue_depth.labels(expert).dec()
                for other in [*calls[position:], *queued]:
                    if other.started is not None and not other.started.done():
                        other.started.set_exception(exc)
                self._running = None
                return
            if started.done():  # cancelled while the expert was loading
                lease.release()
                continue
            call.lease = lease
            started.set_result(None)

    def _prefetch(self, expert: str, active: bool = False) -> None:
        if self.residency != "lookahead" or self.pool.residency()[expert] is Tier.ACTIVE:
            return
        if active:
            task = asyncio.get_running_loop().create_task(self._preload(expert))
        elif self.pool.residency()[expert] is Tier.DISK:
            task = asyncio.get_running_loop().create_task(self.pool.prefetch(expert))
        else:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _preload(self, expert: str) -> None:
        if not await self.pool.preload(expert) and self.pool.residency()[expert] is Tier.DISK:
            await self.pool.prefetch(expert)

    def _active(self) -> list[str]:
        return [name for name, tier in self.pool.residency().items() if tier is Tier.ACTIVE]

    def _released(self, lease: Lease) -> None:
        lease.release()
        if self.residency == "load_per_request":
            self.pool.evict_when_idle(lease.handle.spec.name)
        if self._wake is not None:
            self._wake.set()

    async def route(self, call: Call) -> Decision:
        """Put the call's Decision on it (pinned requests are not embedded)."""
        start = time.perf_counter()
        if call.request.model == ROUTED_MODEL:
            decision = await asyncio.get_running_loop().run_in_executor(None, self.router.route, call.request)
            self.metrics.route_seconds.observe(time.perf_counter() - start)
        else:
            decision = self.router.route(call.request)
        self.metrics.decisions.labels(decision.expert, decision.category or "-", decision.reason).inc()
        if self.online is not None:
            self.online.publish(self.metrics)  # target, realised cost, weight, map version
        call.decision, call.timings.routed = decision, time.monotonic()
        return decision

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        """Start a routed call; returns once its first chunk exists (or raises before any was sent).
        ``call.expert`` is then the expert answering, ``call.tried`` the experts that failed first."""
        if self.cascade is not None and call.request.model == ROUTED_MODEL:
            return await self.cascade.stream(self, call)  # routing.mode: cascade (coserve.engine.cascade)
        return await self.stream_one(call)

    async def stream_one(self, call: Call) -> AsyncIterator[Chunk]:
        """``stream`` on the decision's expert (its alternatives as fallback), never cascaded."""
        assert call.decision is not None, "route the call first"
        last_error: Exception | None = None
        too_long_at: int | None = None  # context size that a prompt did not fit
        candidates = (call.decision.expert, *call.decision.alternatives)
        known = await self.fit.verdicts(candidates, call.request)  # counted before any load (fit.py)
        for expert in candidates:
            spec = self.library.expert(expert)
            if too_long_at is not None and spec.context <= too_long_at and expert not in known:
                continue  # a smaller or equal context cannot fit the prompt either (not counted: assumed)
            call.expert = expert
            try:
                if (refusal := known.get(expert)) is not None:
                    raise refusal  # as its ``stream`` would refuse it, without queueing or loading
                chunks = await self._run(call)
                first = await anext(chunks, None) or Chunk("", "stop", Usage())
            except (ExpertLoadError, AssetError, ContextTooLong, ExpertFailed) as exc:  # the ones that fall back
                call.tried.append(expert)
                last_error = exc
                if self.online is not None and not isinstance(exc, ContextTooLong):  # the expert's fault
                    self.online.failed(call.id, expert, getattr(exc, "code", None) == "expert_timeout")
                if isinstance(exc, ContextTooLong):
                    too_long_at = spec.context
                continue
            call.timings.first_token = time.monotonic()
            if self.online is not None and call.decision.map_version is not None:
                self.online.served(expert)  # the answering expert's cost moves the budget weight
                self.online.publish(self.metrics)  # /metrics: the realised cost and weight with this answer
            for source in call.tried:
                self.metrics.fallbacks.labels(source, expert).inc()
            return prepended(first, chunks)
        call.expert = call.decision.expert  # no expert answered: the chosen one is on record
        assert last_error is not None
        raise last_error

    async def _run(self, call: Call) -> AsyncIterator[Chunk]:
        """Start the call on ``call.expert`` here: queue it, wait for its lease, execute. The one seam a
        cluster's ingress overrides to run it on a remote expert host (coserve.distributed.ray_engine)."""
        return self._execute(await self._enqueue(call), call)

    async def complete(self, call: Call) -> Completion:
        """Generate the whole answer of a routed call (checked and escalated in cascade mode)."""
        if self.cascade is not None and call.request.model == ROUTED_MODEL:
            return await self.cascade.complete(self, call)
        return await self.complete_one(call)

    async def complete_one(self, call: Call) -> Completion:
        """The whole answer of the decision's expert (its alternatives as fallback), never cascaded."""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        deltas: list[ToolCallDelta] = []
        finish = "stop"
        async for chunk in await self.stream_one(call):
            parts.append(chunk.text)
            logprobs.extend(chunk.logprobs)
            deltas.extend(chunk.tool_calls)
            if chunk.finish_reason:
                finish = chunk.finish_reason
        return Completion("".join(parts), finish, call.usage or Usage(), tuple(logprobs), joined_calls(deltas))

    def _execute(self, lease: Lease, call: Call) -> AsyncIterator[Chunk]:
        """Run the backend's stream in a worker thread (coserve.engine.threaded); the lease is held until it returns."""
        backend = self.pool.backends[lease.handle.spec.name]
        return stream_in_thread(backend, lease, call, self.executor, self.metrics, self._released)

    def health(self) -> dict[str, Any]:
        """What ``/health`` shows of the engine: each expert's state, memory per tier, the queues."""
        pool = self.pool
        return {
            "experts": {name: pool.state(name) for name in self.library.expert_names},
            "memory": {
                "active_bytes": pool.used_bytes(),
                "active_budget_bytes": pool.budget_bytes,
                "ram_bytes": pool.ram_bytes(),
                "ram_budget_bytes": pool.ram_budget_bytes,
            },
            "engine": {"residency": self.residency, "switches": self.switches, "queued": self.scheduler.depth()},
        }

    async def exposition(self) -> str:
        """The metrics in Prometheus's text format (``/metrics``; a cluster's ingress adds its hosts')."""
        return self.metrics.text()

    async def close(self) -> None:
        if self._dispatcher is not None:
            dispatcher, self._dispatcher = self._dispatcher, None
            if self._loop is asyncio.get_running_loop():
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
            elif self._loop is not None and not self._loop.is_closed():  # started on another loop (ASGI tests)
                self._loop.call_soon_threadsafe(dispatcher.cancel)
        await self.pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def prepended(first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """``first``, then ``rest``'s chunks; leaving early closes ``rest`` (the runtime stops at its next
    token). The engine and a cluster's ingress hand out a stream whose first chunk they already read."""
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
