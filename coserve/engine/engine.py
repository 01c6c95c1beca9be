"""The engine: route a request, stage its expert, execute, and fall back when an expert fails.

    route    -> Decision (router, in a worker thread: embedding is CPU work)
    stage    -> pool.acquire(expert): loaded and pinned
    execute  -> backend.stream(...) in a worker thread, chunks handed to the event loop
    answer   -> chunks to the caller; a failure before the first token moves the request to the
                next expert in the Decision's alternatives (``fallback_from`` records the path)

Non-streamed requests are the same stream, collected: one execution path, and a client that goes
away cancels either kind (the backend is told to stop at its next token).
The engine knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from coserve.backends.base import Backend, get_backend
from coserve.config import LibraryConfig
from coserve.engine.pool import ExpertPool, Lease
from coserve.errors import AssetError, ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.metrics import Metrics
from coserve.router.embed import Embedder
from coserve.router.router import CoERouter
from coserve.types import Chunk, Completion, Decision, Request, Usage

__all__ = ["Engine", "Stream"]

_END = object()


@dataclass
class Stream:
    """A started generation: which expert answers, the path it took, and its chunks."""

    expert: str
    fallback_from: tuple[str, ...]
    chunks: AsyncIterator[Chunk]
    started: float = field(default_factory=time.monotonic)


class Engine:
    """Routes and executes requests over one library."""

    def __init__(
        self,
        library: LibraryConfig,
        router: CoERouter,
        pool: ExpertPool,
        metrics: Metrics,
        executor: ThreadPoolExecutor,
    ):
        self.library = library
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self.executor = executor

    @classmethod
    def build(
        cls,
        library: LibraryConfig,
        cache: Path,
        embedder: Embedder | None = None,
        backends: dict[str, Backend] | None = None,
        metrics: Metrics | None = None,
    ) -> Engine:
        """Train or load the router, create one backend per backend name, and the pool."""
        metrics = metrics or Metrics()
        router = CoERouter.load_or_fit(library, cache, embedder)
        by_name = dict(backends or {})
        for spec in library.experts:
            if spec.backend not in by_name:
                by_name[spec.backend] = get_backend(spec.backend)
        per_expert = {spec.name: by_name[spec.backend] for spec in library.experts}
        # Generation threads block inside runtimes for a whole request; size the pool for
        # many concurrent requests, not for the core count.
        executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="coserve-exec")
        budget = min(library.memory.ram, library.memory.active)
        pool = ExpertPool(library, per_expert, budget, executor=executor, metrics=metrics)
        return cls(library, router, pool, metrics, executor)

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
                lease = await self.pool.acquire(expert)
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
            lease.release()
            queue.put_nowait(_END)

        future.add_done_callback(finished)
        try:
            while True:
                item = await queue.get()
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
        await self.pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
