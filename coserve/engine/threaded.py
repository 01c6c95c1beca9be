"""A backend's blocking stream run in a worker thread, its chunks handed to the event loop.

``ThreadStream`` is one request's ``backend.stream`` on an executor, iterated on the loop; the
engine's calls and a Ray peer's loaded experts (coserve.distributed.ray_peer_model) both use it.
``stream_in_thread`` is the engine's: it streams a call on its lease and releases the lease
(``release``) when the runtime returns, whatever ended it. A runtime that produces nothing for
``options.timeout_s`` (default ``DEFAULT_TIMEOUT_S``) counts as hung: the call fails with
``expert_timeout`` (and falls back if nothing was sent yet). A consumer that leaves (client
disconnect, error) tells the runtime to stop at its next token. The call's usage (the last chunk's)
is put on the call and counted in the token metrics.

This module knows nothing about routing, scheduling or HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from coserve.backends.base import Backend, Handle
from coserve.engine.call import Call
from coserve.engine.pool import Lease
from coserve.errors import ExpertFailed
from coserve.metrics import Metrics
from coserve.types import Chunk, Request

__all__ = ["DEFAULT_TIMEOUT_S", "ThreadStream", "stream_in_thread"]

DEFAULT_TIMEOUT_S = 300.0  # seconds without a chunk before an expert counts as hung (options.timeout_s)

_END = object()


class ThreadStream:
    """``backend.stream`` of one request running on ``executor``, iterated on the event loop.

    ``finished`` runs on the loop once the runtime has returned, whatever ended it. ``stop`` tells the
    runtime to stop at its next token (call it when the consumer leaves). With ``timeout_s``, a
    runtime that produces nothing for that long fails the iteration (ExpertFailed ``expert_timeout``);
    an error the runtime raised is raised after its last chunk."""

    def __init__(
        self,
        backend: Backend,
        handle: Handle,
        request: Request,
        executor: Executor,
        finished: Callable[[], None],
        timeout_s: float | None = None,
    ):
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancel = threading.Event()
        self._expert, self._timeout_s, self._ended = handle.spec.name, timeout_s, False

        def emit(chunk: Chunk) -> bool:
            loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
            return self._cancel.is_set()

        def done(future: asyncio.Future[None]) -> None:
            if not future.cancelled():
                future.exception()  # read here too: one no consumer waits for is not "never retrieved"
            finished()
            self._queue.put_nowait(_END)

        self._future = loop.run_in_executor(executor, backend.stream, handle, request.messages, request.sampling, emit)
        self._future.add_done_callback(done)

    def __aiter__(self) -> ThreadStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._ended:
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._queue.get(), self._timeout_s)
        except TimeoutError:
            raise ExpertFailed(
                f"expert {self._expert!r} produced nothing for {self._timeout_s:g} s", code="expert_timeout"
            ) from None
        if item is _END:
            self._ended = True
            if (error := self._future.exception()) is not None:
                raise error
            raise StopAsyncIteration
        assert isinstance(item, Chunk)
        return item

    def stop(self) -> None:
        """Ask the runtime to stop at its next token (the consumer left, or the stream ended)."""
        self._cancel.set()


async def stream_in_thread(
    backend: Backend,
    lease: Lease,
    call: Call,
    executor: ThreadPoolExecutor,
    metrics: Metrics,
    release: Callable[[Lease], None],
) -> AsyncIterator[Chunk]:
    """The chunks of ``call`` on the leased expert (see the module doc)."""
    timeout = float(lease.handle.spec.options.get("timeout_s", DEFAULT_TIMEOUT_S))
    chunks = ThreadStream(backend, lease.handle, call.request, executor, lambda: release(lease), timeout)
    try:
        async for chunk in chunks:
            if chunk.usage is not None:  # the last chunk's: the call's usage
                call.usage = chunk.usage
                metrics.tokens.labels(call.expert, "prompt").inc(chunk.usage.prompt_tokens)
                metrics.tokens.labels(call.expert, "completion").inc(chunk.usage.completion_tokens)
            yield chunk
    finally:
        chunks.stop()  # the consumer left (client disconnect, error): stop at the next token
