"""A backend's blocking stream run in a worker thread, its chunks handed to the event loop.

``stream_in_thread`` starts ``backend.stream`` on the engine's executor and yields its chunks as they
come; the lease is released (``release``) when the runtime returns, whatever ended it. A runtime
that produces nothing for ``options.timeout_s`` (default ``DEFAULT_TIMEOUT_S``) counts as hung: the
call fails with ``expert_timeout`` (and falls back if nothing was sent yet). A consumer that leaves
(client disconnect, error) tells the runtime to stop at its next token. The call's usage (the last
chunk's) is put on the call and counted in the token metrics.

This module knows nothing about routing, scheduling or HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from coserve.backends.base import Backend
from coserve.engine.call import Call
from coserve.engine.pool import Lease
from coserve.errors import ExpertFailed
from coserve.metrics import Metrics
from coserve.types import Chunk

__all__ = ["DEFAULT_TIMEOUT_S", "stream_in_thread"]

DEFAULT_TIMEOUT_S = 300.0  # seconds without a chunk before an expert counts as hung (options.timeout_s)

_END = object()


async def stream_in_thread(
    backend: Backend,
    lease: Lease,
    call: Call,
    executor: ThreadPoolExecutor,
    metrics: Metrics,
    release: Callable[[Lease], None],
) -> AsyncIterator[Chunk]:
    """The chunks of ``call`` on the leased expert (see the module doc)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancel = threading.Event()

    def emit(chunk: Chunk) -> bool:
        loop.call_soon_threadsafe(queue.put_nowait, chunk)
        return cancel.is_set()

    future = loop.run_in_executor(
        executor, backend.stream, lease.handle, call.request.messages, call.request.sampling, emit
    )

    def finished(_: object) -> None:
        release(lease)
        queue.put_nowait(_END)

    future.add_done_callback(finished)
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
            if item.usage is not None:  # the last chunk's: the call's usage
                call.usage = item.usage
                metrics.tokens.labels(call.expert, "prompt").inc(item.usage.prompt_tokens)
                metrics.tokens.labels(call.expert, "completion").inc(item.usage.completion_tokens)
            yield item
    finally:
        cancel.set()  # the consumer left (client disconnect, error): stop at the next token
