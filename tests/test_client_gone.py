"""A streamed request whose client goes away: mid-stream, or while queued behind other requests.

Either way the request is cancelled, its slot freed at once (not when its turn would have come),
and it is counted and logged as 499, never as an answer (docs/operations.md, docs/serving.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from asgi import chat_scope, leaving_receive, settled

from coserve.engine.engine import Engine
from coserve.server.app import create_app

CODE = "write a python function that reverses a string"


def _payload(max_tokens: int) -> bytes:
    body = {"model": "coder", "messages": [{"role": "user", "content": CODE}], "max_tokens": max_tokens}
    return json.dumps({**body, "stream": True}).encode()


def _logged(app: Any) -> list[str]:
    """The statuses in the app's decision log (read after its lifespan closed, so flushed)."""
    with sqlite3.connect(app.state.decision_log.path) as db:
        return [status for (status,) in db.execute("SELECT status FROM decisions ORDER BY time")]


def _counted(app: Any, status: str) -> float:
    text = app.state.server.engine.metrics.text()
    found = re.search(rf'^coserve_requests_total\{{status="{status}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _gauge(app: Any, name: str, expert: str) -> float:
    text = app.state.server.engine.metrics.text()
    found = re.search(rf'^{name}\{{expert="{expert}"\}} (\S+)$', text, re.M)
    assert found, text
    return float(found.group(1))


def _reader(after_tokens: int) -> tuple[Any, asyncio.Event, list[bytes]]:
    """An ASGI ``send`` that keeps the body's parts, and an event set once ``after_tokens`` came."""
    some, received = asyncio.Event(), []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            received.append(message.get("body", b""))
            if sum(b'"content":"' in part for part in received) >= after_tokens:
                some.set()

    return send, some, received


def test_a_stream_left_mid_way_stops_frees_its_expert_and_is_logged_as_client_gone(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(options={"coder": {"token_delay": 0.01}})
    app = create_app(engine, close_engine=False)

    async def scenario() -> None:
        send, gone, received = _reader(3)  # the client leaves after a few tokens
        async with app.router.lifespan_context(app):
            receive = leaving_receive(_payload(2000), gone=gone)  # 20 s if never cancelled
            await asyncio.wait_for(app(chat_scope(), receive, send), timeout=5)
            assert engine.pool.in_flight("coder") <= 1
            assert await settled(engine, "coder", within_s=3) == 0  # it stopped generating
            assert _counted(app, "499") == 1 and _counted(app, "200") == 0
        await engine.close()
        assert b"data: [DONE]" not in b"".join(received)
        assert sum(b'"content":"' in part for part in received) < 100  # it did not run to the end

    asyncio.run(scenario())
    assert _logged(app) == ["499"]


def test_a_queued_stream_left_frees_its_slot_at_once(make_engine: Callable[..., Engine]) -> None:
    # One slot; the first request holds it for 2 s (40 tokens at 0.05 s), the second waits behind it.
    engine = make_engine(options={"coder": {"token_delay": 0.05, "n_parallel": 1}})
    app = create_app(engine, close_engine=False)
    admission = app.state.admission

    async def scenario() -> float:
        sent: dict[str, list[dict[str, Any]]] = {"first": [], "queued": []}

        def sender(name: str) -> Any:
            async def send(message: dict[str, Any]) -> None:
                sent[name].append(message)

            return send

        async with app.router.lifespan_context(app):
            stays = leaving_receive(_payload(40), gone=asyncio.Event())  # never leaves
            first = asyncio.ensure_future(app(chat_scope(), stays, sender("first")))
            await asyncio.sleep(0.2)
            start = time.monotonic()
            leaves = leaving_receive(_payload(40), after_s=0.3)  # leaves while queued
            await asyncio.wait_for(app(chat_scope(), leaves, sender("queued")), timeout=5)
            left_after = time.monotonic() - start
            assert admission.pending == 1  # only the first holds a slot now
            assert engine.scheduler.depth() == {"coder": 0}
            assert _gauge(app, "coserve_queue_depth", "coder") == 0  # /metrics agrees with /health
            await asyncio.wait_for(first, timeout=10)
            assert _counted(app, "499") == 1 and _counted(app, "200") == 1
        await engine.close()
        assert sent["queued"][0]["status"] == 499
        assert sent["first"][0]["status"] == 200
        return left_after

    # The first request ends 2 s after it started: the queued one was let go long before its turn.
    assert asyncio.run(scenario()) < 1.0
    assert sorted(_logged(app)) == ["200", "499"]


def test_a_stream_cancelled_while_serving_is_client_gone_not_cut(make_engine: Callable[..., Engine]) -> None:
    """Ray Serve cancels a request whose client left; only the drain deadline's cancellation is a cut (503)."""
    engine = make_engine(options={"coder": {"token_delay": 0.01}})
    app = create_app(engine, close_engine=False)

    async def scenario() -> None:
        send, some, _ = _reader(3)
        async with app.router.lifespan_context(app):
            receive = leaving_receive(_payload(2000), gone=asyncio.Event())  # never says it left
            serving = asyncio.ensure_future(app(chat_scope(), receive, send))
            await asyncio.wait_for(some.wait(), timeout=5)
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            assert await settled(engine, "coder", within_s=3) == 0
        await engine.close()

    asyncio.run(scenario())
    assert _logged(app) == ["499"]
