"""The ingress's wait for a host's next item (coserve.distributed.ray_engine), without Ray: a silent
stream is probed every ``PROBE_AFTER_S`` until its item comes, and a probe that raises ends the wait
and drops the pending read. The Ray cluster tests (tests/test_ray_serve.py) run it on real hosts."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from coserve.distributed import ray_engine


async def _silent_until(release: asyncio.Event, cancelled: list[bool]) -> AsyncIterator[str]:
    try:
        await release.wait()
    except asyncio.CancelledError:
        cancelled.append(True)
        raise
    yield "item"


def test_a_silent_stream_is_probed_until_its_item_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_engine, "PROBE_AFTER_S", 0.01)
    probes: list[int] = []

    async def scenario() -> object:
        release = asyncio.Event()

        async def probe() -> None:
            probes.append(len(probes))
            if len(probes) == 3:
                release.set()  # the host answers after the third probe

        return await ray_engine._next_or_probe(_silent_until(release, []), probe)

    assert asyncio.run(scenario()) == "item"
    assert probes == [0, 1, 2]


def test_a_probe_that_raises_ends_the_wait_and_drops_the_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_engine, "PROBE_AFTER_S", 0.01)
    cancelled: list[bool] = []

    async def probe() -> None:
        raise TimeoutError("no host answers")

    async def scenario() -> None:
        with pytest.raises(TimeoutError, match="no host answers"):
            await ray_engine._next_or_probe(_silent_until(asyncio.Event(), cancelled), probe)
        await asyncio.sleep(0)  # the cancelled read runs its handler

    asyncio.run(scenario())
    assert cancelled == [True]


def test_the_end_of_the_stream_is_the_end_marker() -> None:
    async def empty() -> AsyncIterator[str]:
        return
        yield  # an async generator with no item

    async def never() -> None:
        raise AssertionError("an ended stream needs no probe")

    assert asyncio.run(ray_engine._next_or_probe(empty(), never)) is ray_engine._END


class _QueuedHost:
    """A stand-in expert-host handle whose stream says its node, then waits (a call queued for a slot)."""

    def __init__(self) -> None:
        self.named = asyncio.Event()

    def options(self, **_: object) -> _QueuedHost:
        return self

    @property
    def stream(self) -> _QueuedHost:
        return self

    def remote(self, *_: object) -> AsyncIterator[object]:
        async def items() -> AsyncIterator[object]:
            yield {"node": "a"}
            self.named.set()
            await asyncio.Event().wait()  # never a first chunk: the client leaves first
            yield "unreachable"

        return items()


def test_a_call_cancelled_before_its_first_chunk_leaves_no_request_in_flight() -> None:
    """Session 13's walk: clients that left while their calls waited in a host's queue (the node
    named, no chunk yet) left /health's ``in_flight`` of that node negative (-1 per call)."""
    from coserve.distributed.ray_choice import HostBook

    engine = object.__new__(ray_engine.ClusterEngine)
    engine.host = _QueuedHost()
    engine.book = HostBook({"a": ["small"]})
    engine._refresh_later = lambda node: None  # type: ignore[method-assign]
    call = SimpleNamespace(request=None, expert="small", node=None)

    async def scenario() -> None:
        chunks = engine._relay(["a"], call)  # type: ignore[arg-type]
        first = asyncio.ensure_future(anext(chunks))
        await engine.host.named.wait()
        await asyncio.sleep(0)  # the relay has the node record and waits for the first chunk
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await chunks.aclose()

    asyncio.run(scenario())
    assert engine.book.in_flight == {"a": 0}


def test_a_dropped_read_that_ends_in_another_error_is_not_reported_unretrieved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Session 13's walk: Ray's stream turns the cancelled read into RequestCancelledError, and every
    such read dropped by a probe (or by a client leaving) logged "Task exception was never retrieved"
    with a traceback in the ingress's log."""
    monkeypatch.setattr(ray_engine, "PROBE_AFTER_S", 0.01)
    reported: list[str] = []

    async def converts_cancel() -> AsyncIterator[str]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("request cancelled") from None  # as Ray's handle does
        yield "unreachable"

    async def probe() -> None:
        raise TimeoutError("no host answers")

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context["message"]))
        with pytest.raises(TimeoutError):
            await ray_engine._next_or_probe(converts_cancel(), probe)
        for _ in range(3):
            await asyncio.sleep(0)  # the dropped read ends with its RuntimeError
        gc.collect()  # an unretrieved exception is reported when its task is collected

    asyncio.run(scenario())
    assert reported == []
