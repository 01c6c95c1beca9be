"""Faults: a hung expert times out (and falls back); a client that leaves cancels a non-streamed request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from asgi import chat_scope, leaving_receive, settled
from fastapi.testclient import TestClient

from coserve.backends.fake import FakeBackend
from coserve.engine.engine import Engine
from coserve.server.app import create_app

URL = "/v1/chat/completions"
MATH = "solve the equation x squared plus 3 x equals 10"


def _body(model: str, text: str, max_tokens: int = 4) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def test_a_hung_expert_times_out_and_falls_back(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"big": {"token_delay": 2.0, "timeout_s": 0.2}})
    with TestClient(create_app(engine)) as client:
        routed = client.post(URL, json=_body("coserve", MATH))
        assert routed.status_code == 200, routed.text
        assert routed.json()["coserve"]["fallback_from"] == ["big"]
        pinned = client.post(URL, json=_body("big", MATH))
        assert pinned.status_code == 502
        assert pinned.json()["error"]["code"] == "expert_timeout"
        assert "0.2 s" in pinned.json()["error"]["message"]


def test_client_disconnect_cancels_a_non_streamed_request(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"token_delay": 0.05}})
    backend = engine.pool.backends["coder"]
    assert isinstance(backend, FakeBackend)
    app = create_app(engine, close_engine=False)
    payload = json.dumps(_body("coder", "write python code", max_tokens=200)).encode()
    sent: list[dict[str, Any]] = []

    async def scenario() -> float:
        start = time.monotonic()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        receive = leaving_receive(payload, after_s=0.4)  # the client leaves while the expert generates
        scope = chat_scope()
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        elapsed = time.monotonic() - start
        assert await settled(engine, "coder", within_s=2) == 0
        await engine.close()
        return elapsed

    elapsed = asyncio.run(scenario())
    # 200 tokens at 0.05 s would take 10 s: the request was cancelled, not run to the end
    assert elapsed < 2.0
    assert sent[0]["status"] == 499


def test_out_of_memory_on_load_falls_back_and_the_rest_keeps_serving(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_load_oom": True}})
    with TestClient(create_app(engine)) as client:
        routed = client.post(URL, json=_body("coserve", "write a python function to sort a list"))
        assert routed.status_code == 200, routed.text
        assert routed.json()["coserve"]["fallback_from"] == ["coder"]
        pinned = client.post(URL, json=_body("coder", "write python code"))
        assert pinned.status_code == 503
        assert client.post(URL, json=_body("small", "hello friend")).status_code == 200
        health = client.get("/health").json()["experts"]["coder"]
        assert health["tier"] != "active" and health["backoff_s"] > 0 and "memory" in health["last_error"]
