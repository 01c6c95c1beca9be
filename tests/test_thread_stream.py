"""ThreadStream, the one bridge from a backend's blocking stream to the event loop (the engine's calls
and a Ray peer's loaded experts both use it): a consumer that leaves stops the runtime, the runtime's
error comes after its chunks, ``finished`` runs once whatever ended it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from coserve.engine.threaded import ThreadStream
from coserve.types import Chunk, Message, Request, Sampling

REQUEST = Request((Message("user", "hi"),), "small", Sampling(max_tokens=4))
HANDLE: Any = SimpleNamespace(spec=SimpleNamespace(name="small"))


class Runtime:
    """A backend whose ``stream`` is the given function of ``emit``."""

    def __init__(self, stream: Callable[[Callable[[Chunk], bool]], None]):
        self._stream = stream

    def stream(self, handle: object, messages: object, sampling: object, emit: Callable[[Chunk], bool]) -> None:
        self._stream(emit)


STOPPED: list[int] = []  # the chunk at which _long_runtime was told to stop


def _long_runtime(emit: Callable[[Chunk], bool]) -> None:
    """Emits a chunk a millisecond for at least 20 s unless told to stop."""
    for i in range(20_000):
        if emit(Chunk(str(i))):
            STOPPED.append(i)
            return
        time.sleep(0.001)


def _two_then_error(emit: Callable[[Chunk], bool]) -> None:
    emit(Chunk("a"))
    emit(Chunk("b"))
    raise ValueError("runtime broke")


def test_a_consumer_that_leaves_stops_the_runtime_and_finished_runs_once() -> None:
    finished: list[bool] = []

    async def scenario() -> str:
        with ThreadPoolExecutor(1) as executor:
            chunks = ThreadStream(Runtime(_long_runtime), HANDLE, REQUEST, executor, lambda: finished.append(True))  # type: ignore[arg-type]
            first = await anext(chunks)
            chunks.stop()
            async for _ in chunks:  # what the runtime emitted before it saw the stop
                pass
            return first.text

    STOPPED.clear()
    assert asyncio.run(scenario()) == "0"
    assert len(STOPPED) == 1  # the runtime returned because emit told it to stop
    assert finished == [True]


def test_the_runtimes_error_comes_after_its_chunks_and_then_the_stream_is_over() -> None:
    finished: list[bool] = []

    async def scenario() -> list[str]:
        texts: list[str] = []
        with ThreadPoolExecutor(1) as executor:
            chunks = ThreadStream(Runtime(_two_then_error), HANDLE, REQUEST, executor, lambda: finished.append(True))  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="runtime broke"):
                async for chunk in chunks:
                    texts.append(chunk.text)
            with pytest.raises(StopAsyncIteration):
                await anext(chunks)
        return texts

    assert asyncio.run(scenario()) == ["a", "b"]
    assert finished == [True]


def test_an_error_after_the_consumer_left_is_not_reported_as_never_retrieved(caplog: pytest.LogCaptureFixture) -> None:
    """A runtime that fails after its consumer left (a cut request's expert unloaded at shutdown)
    raises into no one: asyncio must not print "Future exception was never retrieved"."""
    import gc
    import threading

    go = threading.Event()

    def fails_later(emit: Callable[[Chunk], bool]) -> None:
        emit(Chunk("a"))
        go.wait(5.0)
        raise ValueError("expert unloaded")

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            chunks = ThreadStream(Runtime(fails_later), HANDLE, REQUEST, executor, lambda: None)  # type: ignore[arg-type]
            await anext(chunks)
            chunks.stop()  # the consumer leaves: nobody reads on
            go.set()
        await asyncio.sleep(0.05)  # the future's callbacks run
        del chunks

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(scenario())
        gc.collect()
    assert "never retrieved" not in caplog.text
