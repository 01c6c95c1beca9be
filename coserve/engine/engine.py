"""The engine: route, schedule, load, execute, answer — with fallback when an expert fails.

    route     -> Decision (router, in a worker thread: embedding is CPU work)
    schedule  -> the request joins its expert's queue; the dispatcher picks which expert runs
                 next (stay on the running one, else a loaded one, bounded wait for the rest)
                 and admits up to ``slots`` requests of it at a time (continuous batching)
    load      -> pool.acquire(expert): ACTIVE and pinned; the next expert is loaded while the
                 running one drains when both fit the ACTIVE budget, else prefetched to RAM
    execute   -> backend.stream(...) in a worker thread, chunks handed to the event loop
    answer    -> chunks to the caller; a failure before the first token moves the request to the
                 next expert in the Decision's alternatives (``fallback_from`` records the path)

Only one expert executes at a time: on a CPU the experts share the same cores, so running two at
once only makes both slower, while serving one expert's queue as a batch avoids switches.
Non-streamed requests are the same stream, collected. The engine knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from coserve.assets import locate
from coserve.backends.base import Backend, get_backend
from coserve.backends.options import OPTIONS
from coserve.config import LibraryConfig
from coserve.engine.pool import ExpertPool, Lease
from coserve.engine.scheduler import Scheduler, Work
from coserve.errors import AssetError, ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.metrics import Metrics
from coserve.router.embed import Embedder
from coserve.router.router import CoERouter
from coserve.types import Chunk, Completion, Decision, Request, Tier, Usage

Policy = Literal["lookahead", "lru", "load_per_request"]

DEFAULT_TIMEOUT_S = 300.0  # seconds without a chunk before an expert counts as hung (options.timeout_s)

__all__ = ["Engine", "Stream", "limit_blas_threads", "missing_files", "shares_cores"]

_END = object()


def shares_cores(library: LibraryConfig) -> bool:
    """Whether an expert of the library decodes on the cores the router runs on."""
    return any(OPTIONS[spec.backend].on_host_cores(spec.options) for spec in library.experts)


def missing_files(library: LibraryConfig) -> dict[str, str]:
    """Experts whose source cannot be found (a package not installed, a path that is not there),
    without reading or assembling anything; expert -> the reason."""
    base = library.path.parent if library.path else None
    problems = {}
    for spec in library.experts:
        try:
            for source in spec.parts:
                locate(source, base)
        except AssetError as exc:
            problems[spec.name] = exc.message
    return problems


def limit_blas_threads() -> None:
    """One BLAS thread for the router's matrix products, in this whole process.

    The router embeds each prompt with numpy. OpenBLAS's worker threads spin for a while after
    every product, and an expert decoding on the same cores waits on its slowest thread at every
    step: with two cores, embedding 2 prompts/s cut `large`'s throughput from 1.11 to 0.72 req/s;
    with one BLAS thread it stays at 1.04-1.07 req/s, and an embedding takes 9 ms instead of 6 ms
    (docs/decisions.md, 2026-11-30).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


@dataclass
class Stream:
    """A started generation: which expert answers, the path it took, and its chunks."""

    expert: str
    fallback_from: tuple[str, ...]
    chunks: AsyncIterator[Chunk]
    started: float = field(default_factory=time.monotonic)


class Engine:
    """Routes, schedules and executes requests over one library."""

    def __init__(
        self,
        library: LibraryConfig,
        router: CoERouter,
        pool: ExpertPool,
        metrics: Metrics,
        executor: ThreadPoolExecutor,
        policy: Policy = "lookahead",
    ):
        self.library = library
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self.executor = executor
        self.policy = policy
        # "lru" and "load_per_request" serve strictly in arrival order (a zero wait bound) and
        # evict by recency only; "lookahead" batches by expert, prefetches and evicts by next use.
        self.scheduler = Scheduler(max_wait_s=library.memory.max_wait_s if policy == "lookahead" else 0.0)
        if policy == "lookahead":
            pool.next_use = self.scheduler.next_use
        self.unavailable: dict[str, str] = {}  # expert -> why its model file is not there (at start)
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
        policy: Policy = "lookahead",
    ) -> Engine:
        """Train or load the router, create one backend per backend name, and the pool."""
        metrics = metrics or Metrics()
        if shares_cores(library):
            limit_blas_threads()
        router = CoERouter.load_or_fit(library, cache, embedder)
        by_name = dict(backends or {})
        for spec in library.experts:
            if spec.backend not in by_name:
                by_name[spec.backend] = get_backend(spec.backend)
        per_expert = {spec.name: by_name[spec.backend] for spec in library.experts}
        # Generation threads block inside runtimes for a whole request; size the pool for
        # many concurrent requests, not for the core count.
        executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="coserve-exec")
        memory = library.memory
        pool = ExpertPool(
            library,
            per_expert,
            memory.active,
            executor=executor,
            metrics=metrics,
            ram_budget_bytes=memory.ram,
            min_residency_s=memory.min_residency_s,
        )
        engine = cls(library, router, pool, metrics, executor, policy)
        for name, problem in missing_files(library).items():
            pool.note_unavailable(name, problem)
            engine.unavailable[name] = problem
        return engine

    def slots(self, expert: str) -> int:
        """Requests of one expert that run together: the concurrency its backend declares."""
        if self.policy == "load_per_request":
            return 1  # one request per load, strictly
        return self.pool.concurrency(expert)

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

    async def _admit(self, expert: str, request: Request) -> Lease:
        """Queue the request for its expert; returns once the dispatcher hands it a pinned expert."""
        wake = self._ensure_dispatcher()
        started: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        work = Work(expert, time.monotonic(), started)
        self.scheduler.submit(work)
        self.metrics.queue_depth.labels(expert).inc()
        wake.set()
        try:
            return await started
        except asyncio.CancelledError:
            work.cancelled = True  # the caller went away while queued
            if started.done() and not started.cancelled() and started.exception() is None:
                started.result().release()
            raise

    async def _dispatch(self) -> None:
        """Pick the next expert, load it, admit its queued requests into free slots; repeat."""
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

    async def _start(self, expert: str, works: list[Work]) -> None:
        for position, work in enumerate(works):
            self.metrics.queue_depth.labels(expert).dec()
            started: asyncio.Future[Lease] = work.payload
            if started.done():
                continue
            try:
                lease = await self.pool.acquire(expert)
            except Exception as exc:  # whatever stops a load must reach the waiting requests
                if not isinstance(exc, (ExpertLoadError, AssetError)):
                    exc = ExpertLoadError(f"expert {expert!r} could not be made ready: {exc}")
                # This expert cannot run now: fail this batch and its queued requests, so they fall back.
                queued = self.scheduler.take(expert, 10**9)
                for _ in [*works[position + 1 :], *queued]:
                    self.metrics.queue_depth.labels(expert).dec()
                for other in [*works[position:], *queued]:
                    if not other.payload.done():
                        other.payload.set_exception(exc)
                self._running = None
                return
            if started.done():  # cancelled while the expert was loading
                lease.release()
                continue
            started.set_result(lease)

    def _prefetch(self, expert: str, active: bool = False) -> None:
        if self.policy != "lookahead" or self.pool.residency()[expert] is Tier.ACTIVE:
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
        if self.policy == "load_per_request":
            self.pool.evict_when_idle(lease.handle.spec.name)
        if self._wake is not None:
            self._wake.set()

    async def route(self, request: Request) -> Decision:
        """The request's Decision (pinned requests are not embedded)."""
        start = time.perf_counter()
        if request.model == "coserve":
            decision = await asyncio.get_running_loop().run_in_executor(None, self.router.route, request)
            self.metrics.route_seconds.observe(time.perf_counter() - start)
        else:
            decision = self.router.route(request)
        self.metrics.decisions.labels(decision.expert, decision.category or "-", decision.reason).inc()
        return decision

    async def stream(self, request: Request, decision: Decision) -> Stream:
        """Start generating; returns once the first chunk exists (or raises before any was sent)."""
        tried: list[str] = []
        last_error: Exception | None = None
        too_long_at: int | None = None  # context size that a prompt did not fit
        for expert in (decision.expert, *decision.alternatives):
            spec = self.library.expert(expert)
            if too_long_at is not None and spec.context <= too_long_at:
                continue  # a smaller or equal context cannot fit the prompt either
            try:
                lease = await self._admit(expert, request)
            except (ExpertLoadError, AssetError) as exc:
                tried.append(expert)
                last_error = exc
                continue
            chunks = self._execute(lease, request)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = Chunk("", "stop", Usage())
            except ContextTooLong as exc:
                tried.append(expert)
                last_error, too_long_at = exc, spec.context
                continue
            except ExpertFailed as exc:
                tried.append(expert)
                last_error = exc
                continue
            for source in tried:
                self.metrics.fallbacks.labels(source, expert).inc()
            return Stream(expert, tuple(tried), self._chain(first, chunks, expert))
        assert last_error is not None
        raise last_error

    async def complete(self, request: Request, decision: Decision) -> tuple[Stream, Completion]:
        """Generate the whole answer."""
        stream = await self.stream(request, decision)
        parts: list[str] = []
        finish, usage = "stop", Usage()
        async for chunk in stream.chunks:
            parts.append(chunk.text)
            if chunk.finish_reason:
                finish = chunk.finish_reason
            if chunk.usage:
                usage = chunk.usage
        return stream, Completion("".join(parts), finish, usage)

    async def _chain(self, first: Chunk, rest: AsyncIterator[Chunk], expert: str) -> AsyncIterator[Chunk]:
        yield first
        async for chunk in rest:
            if chunk.usage is not None:
                self.metrics.tokens.labels(expert, "prompt").inc(chunk.usage.prompt_tokens)
                self.metrics.tokens.labels(expert, "completion").inc(chunk.usage.completion_tokens)
            yield chunk

    async def _execute(self, lease: Lease, request: Request) -> AsyncIterator[Chunk]:
        """Run the backend's stream in a worker thread; the lease is held until it returns."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()
        backend = self.pool.backends[lease.handle.spec.name]

        def emit(chunk: Chunk) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return cancel.is_set()

        future = loop.run_in_executor(
            self.executor, backend.stream, lease.handle, request.messages, request.sampling, emit
        )

        def finished(_: object) -> None:
            self._released(lease)
            queue.put_nowait(_END)

        future.add_done_callback(finished)
        # A runtime that produces nothing for this long is treated as hung: the request fails (and
        # falls back if nothing was sent yet); the runtime is told to stop at its next token.
        timeout = float(lease.handle.spec.options.get("timeout_s", DEFAULT_TIMEOUT_S))
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    raise ExpertFailed(
                        f"expert {lease.handle.spec.name!r} produced nothing for {timeout:g} s", code="expert_timeout"
                    ) from None
                if item is _END:
                    error = future.exception()
                    if error is not None:
                        raise error
                    return
                assert isinstance(item, Chunk)
                yield item
        finally:
            cancel.set()  # the consumer left (client disconnect, error): stop at the next token

    async def close(self) -> None:
        if self._dispatcher is not None:
            dispatcher, self._dispatcher = self._dispatcher, None
            if self._loop is asyncio.get_running_loop():
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
            elif self._loop is not None and not self._loop.is_closed():
                # started by requests served on another event loop (an ASGI test transport)
                self._loop.call_soon_threadsafe(dispatcher.cancel)
        await self.pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
