"""A raw ASGI client that goes away mid-request (TestClient buffers whole responses, so it cannot)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

CHAT_URL = "/v1/chat/completions"


def chat_scope() -> dict[str, Any]:
    """The ASGI scope of ``POST /v1/chat/completions`` with a JSON body."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": CHAT_URL, "raw_path": CHAT_URL.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000), "server": ("test", 80),
    }  # fmt: skip


def leaving_receive(payload: bytes, *, after_s: float | None = None, gone: asyncio.Event | None = None) -> Any:
    """An ASGI ``receive``: the body, then ``http.disconnect`` once ``after_s`` passed or ``gone`` is set.

    Like uvicorn's, it answers at once after the disconnect and blocks (cancellably) before it.
    """
    start = time.monotonic()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        if gone is not None:
            await gone.wait()
        elif after_s is not None and (left := after_s - (time.monotonic() - start)) > 0:
            await asyncio.sleep(left)
        return {"type": "http.disconnect"}

    return receive


async def settled(engine: Any, expert: str, within_s: float) -> int:
    """Wait up to ``within_s`` for ``expert``'s requests in flight to reach zero; returns how many are left."""
    deadline = time.monotonic() + within_s
    while engine.pool.in_flight(expert) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return int(engine.pool.in_flight(expert))


def chunks_read_before_refusal(app: Any, close: Any, path: str = CHAT_URL) -> tuple[list[dict[str, Any]], int]:
    """POST 1000 chunks of 1 KiB to ``path`` of ``app``; returns the messages sent back and how many
    chunks the app pulled (``close``: an awaitable factory run after the request, e.g. the engine's close)."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": pulled < 1000}  # 1000 KiB offered

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def scenario() -> None:
        scope = {**chat_scope(), "path": path, "raw_path": path.encode()}
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        await close()

    asyncio.run(scenario())
    return sent, pulled
