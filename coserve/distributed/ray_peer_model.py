"""One expert loaded in a replica of the benchmark's peer (coserve.distributed.ray_peer): coserve's own
backend runtime for it, its slots, and the requests streaming on it.

Ray Serve's multiplexer drops a model from its cache when it loads another past its limit and
calls the model's ``__del__``; requests may still be streaming on it then. ``release`` (what
``__del__`` calls) waits for them to finish before the runtime is freed, so a replica never holds
more runtimes than its limit and never frees one under a running request; a request that already
holds the model finishes on it. The multiplexer runs ``__del__`` in a worker thread and waits for
it before loading the next model, as the engine's pool waits for in-flight requests before it
evicts.

This module knows nothing about Ray or routing: it is the backend contract (coserve.backends.base)
made into an object per loaded expert.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from coserve.backends.base import Backend, Handle
from coserve.config import ExpertSpec
from coserve.engine.threaded import ThreadStream
from coserve.errors import ExpertFailed
from coserve.types import Chunk, Request

__all__ = ["DRAIN_TIMEOUT_S", "PeerModel"]

log = logging.getLogger("coserve.distributed")

DRAIN_TIMEOUT_S = 600.0  # longest ``release`` waits for streams; after it, the last one frees the runtime


class PeerModel:
    """A loaded expert: ``run`` streams a request on it, ``release`` frees it once no request runs."""

    def __init__(self, backend: Backend, spec: ExpertSpec, staged: Any, handle: Handle, executor: Executor):
        self.backend, self.spec, self.executor = backend, spec, executor
        self._staged: Any = staged
        self._handle: Handle | None = handle
        self._slots = asyncio.Semaphore(max(1, backend.concurrency(spec)))  # the runtime's concurrency
        self._lock = threading.Condition()
        self._in_flight = 0
        self._closing = False

    @classmethod
    async def load(cls, backend: Backend, spec: ExpertSpec, base: Path | None, executor: Executor) -> PeerModel:
        """DISK -> RAM -> ACTIVE in worker threads (the replica's event loop keeps serving)."""
        loop = asyncio.get_running_loop()
        staged = await loop.run_in_executor(executor, backend.stage, spec, base)
        try:
            handle = await loop.run_in_executor(executor, backend.load, spec, staged)
        except BaseException:
            await loop.run_in_executor(executor, backend.unstage, staged)
            raise
        return cls(backend, spec, staged, handle, executor)

    @property
    def loaded(self) -> bool:
        return self._handle is not None and not self._closing

    async def run(self, request: Request) -> AsyncIterator[Chunk]:
        """The request's chunks from the backend. The model counts as in use from the first step of
        this generator (taken at once after the cache returned it) until the backend's thread ends."""
        self._enter()
        try:
            await self._slots.acquire()
        except BaseException:
            self._leave()
            raise
        loop = asyncio.get_running_loop()

        def finished() -> None:
            self._slots.release()
            loop.run_in_executor(self.executor, self._leave)  # may free the runtime: not on the loop

        handle = self._handle
        assert handle is not None  # held by _enter
        chunks = ThreadStream(self.backend, handle, request, self.executor, finished)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            chunks.stop()  # the consumer left or the stream ended: the backend stops at its next token

    def release(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Free the runtime once no request runs on it (waits up to ``drain_timeout_s``; after that the
        last request to finish frees it). Idempotent."""
        with self._lock:
            self._closing = True
            if not self._lock.wait_for(lambda: self._in_flight == 0, timeout=drain_timeout_s):
                log.warning("expert %s: requests still running after %.0f s; freed when they end",
                            self.spec.name, drain_timeout_s)  # fmt: skip
                return
        self._free()

    def __del__(self) -> None:
        """What Ray Serve's multiplexer calls when it drops the model from its cache."""
        self.release()

    def _enter(self) -> None:
        with self._lock:
            if self._handle is None:
                raise ExpertFailed(f"expert {self.spec.name!r} was unloaded", code="unloaded")
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            free = self._closing and self._in_flight == 0
            self._lock.notify_all()
        if free:
            self._free()

    def _free(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
            staged, self._staged = self._staged, None
        if handle is not None:
            self.backend.unload(handle)
        if staged is not None:
            self.backend.unstage(staged)
