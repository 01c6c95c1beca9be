"""Admission control: global and per-expert bounds (429 + Retry-After), draining (503), release, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from asgi import chat_scope, chunks_read_before_refusal, leaving_receive
from conftest import HELD_OUT, write_library
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coserve.config import load_library
from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.errors import ConfigError, TooManyRequests
from coserve.server.admission import Admission
from coserve.server.app import create_app
from coserve.types import Decision, Message, Request

URL = "/v1/chat/completions"
SLOW = {name: {"token_delay": 0.03} for name in ("small", "big", "coder")}


def body(model: str = "coserve", content: str = HELD_OUT["code"], **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 10, **extra}


async def fire(app: FastAPI, payloads: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every payload at once through the app (its lifespan included)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(await asyncio.gather(*(client.post(URL, json=p) for p in payloads)))


def assert_refused(response: httpx.Response, status: int, type_: str, code: str) -> None:
    assert response.status_code == status, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)


def test_global_bound_refuses_exactly_the_excess(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options=SLOW, server={"max_pending": 2})
    app = create_app(engine)
    responses = asyncio.run(fire(app, [body() for _ in range(6)]))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429, 429]
    for response in responses:
        if response.status_code == 429:
            assert_refused(response, 429, "rate_limit_exceeded", "too_many_requests")
    admission: Admission = app.state.admission
    assert admission.pending == 0 and admission.per_expert == {}


def test_per_expert_bound(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options=SLOW, server={"max_pending": 10, "max_pending_per_expert": 2})
    app = create_app(engine)
    payloads = [body("small") for _ in range(5)] + [body("big")]
    responses = asyncio.run(fire(app, payloads))
    small = sorted(r.status_code for r in responses[:5])
    assert small == [200, 200, 429, 429, 429]
    assert responses[5].status_code == 200  # another expert is not held back
    refused = next(r for r in responses if r.status_code == 429)
    assert_refused(refused, 429, "rate_limit_exceeded", "too_many_requests")
    assert "'small'" in refused.json()["error"]["message"]
    assert app.state.admission.pending == 0 and app.state.admission.per_expert == {}


def test_released_after_errors_and_streams(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"big": {"fail_generate": True}}, server={"max_pending": 1})
    app = create_app(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(3):  # with a bound of 1, any leak would turn the next request into a 429
            assert client.post(URL, json=body()).status_code == 200
            assert client.post(URL, content=b"{not json").status_code == 400
            assert client.post(URL, json=body("nope")).status_code == 404
            assert client.post(URL, json=body(temperature=5)).status_code == 422
            assert (
                client.post(URL, json=body("big", coserve={"exclude_experts": ["small", "coder"]})).status_code == 502
            )
            response = client.post(URL, json=body(stream=True))
            assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        assert app.state.admission.pending == 0 and app.state.admission.per_expert == {}
        bounds = {"max_pending": 1, "max_pending_per_expert": 32}  # as configured (32: the default)
        assert client.get("/health").json()["admission"] == {"pending": 0, "per_expert": {}, **bounds}


def test_released_after_client_disconnect(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"token_delay": 0.05}}, server={"max_pending": 1})
    app = create_app(engine)
    payload = json.dumps(body("coder", max_tokens=200)).encode()
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        receive = leaving_receive(payload, after_s=0.3)
        scope = chat_scope()
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), timeout=5)
            assert app.state.admission.pending == 0

    asyncio.run(scenario())
    assert sent[0]["status"] == 499


def test_draining_refuses_with_503(make_engine: Callable[..., Engine]) -> None:
    app = create_app(make_engine())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post(URL, json=body()).status_code == 200
        app.state.admission.draining = True
        response = client.post(URL, json=body())
        assert_refused(response, 503, "server_error", "draining")
        assert_refused(client.get("/v1/models"), 503, "server_error", "draining")
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        app.state.admission.draining = False
    assert app.state.admission.draining  # set again by the lifespan's exit (shutdown)


def _routed_to(expert: str) -> Call:
    call = Call(Request((Message("user", "hi"),), expert))
    call.decision = Decision(expert, None, 1.0, (), "pinned")
    return call


def test_admission_counts_once() -> None:
    admission = Admission(max_pending=2, max_pending_per_expert=1)
    first, second, third = _routed_to("a"), _routed_to("a"), _routed_to("b")
    admission.admit(first)
    admission.admit(first)  # a second admit of the same call counts nothing
    admission.claim(first)
    admission.admit(second)
    with pytest.raises(TooManyRequests) as refused:
        admission.claim(second)
    assert refused.value.headers() == {"retry-after": "1"}
    assert str(refused.value) == "expert 'a' holds 1 request already; retry later"
    with pytest.raises(TooManyRequests) as full:
        admission.admit(third)
    assert str(full.value) == "the server holds 2 requests already; retry later"
    assert not third.admitted
    admission.release(first)
    admission.release(first)  # a second release does nothing
    assert (admission.pending, admission.per_expert) == (1, {})
    admission.claim(second)
    assert (second.held_expert, admission.per_expert) == ("a", {"a": 1})
    admission.release(second)
    assert (admission.pending, admission.per_expert) == (0, {})
    admission.release(third)  # never admitted: nothing to give back
    assert (admission.pending, admission.per_expert) == (0, {})


def test_body_and_message_limits(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(server={"max_body_bytes": "2KiB", "max_messages": 3})
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        big = client.post(URL, json=body(content="word " * 1000))
        assert big.status_code == 400 and big.json()["error"]["code"] == "body_too_large"
        turns = [{"role": "user", "content": "hello friend"}] * 4
        many = client.post(URL, json={"model": "coserve", "messages": turns})
        assert many.status_code == 400 and many.json()["error"]["param"] == "messages"
        assert client.post(URL, json={"model": "coserve", "messages": turns[:3]}).status_code == 200


def test_a_body_over_the_limit_is_not_read_to_its_end(make_engine: Callable[..., Engine]) -> None:
    """However long a body is sent, the server reads (and holds) no more than the limit and a chunk."""
    engine = make_engine(server={"max_body_bytes": "2KiB"})
    sent, pulled = chunks_read_before_refusal(create_app(engine, close_engine=False), engine.close)
    assert sent[0]["status"] == 400
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]["code"] == "body_too_large"
    assert pulled == 3  # 3 KiB is past 2 KiB: it read no further (it read all 1000 before)


def test_server_section_is_strict(tmp_path: Any) -> None:
    assert load_library(write_library(tmp_path)).server.max_pending == 64  # defaults without a section
    with pytest.raises(ConfigError, match=r"server\.max_pendin: unknown key"):
        load_library(write_library(tmp_path, server={"max_pendin": 3}))
    with pytest.raises(ConfigError, match=r"server\.max_pending"):
        load_library(write_library(tmp_path, server={"max_pending": 0}))
    with pytest.raises(ConfigError, match="sha256") as error:
        load_library(write_library(tmp_path, server={"api_keys": ["sk-plaintext-secret"]}))
    assert "sk-plaintext-secret" not in str(error.value)
    with pytest.raises(ConfigError, match=r"server\.log\.stor_text: unknown key"):
        load_library(write_library(tmp_path, server={"log": {"stor_text": True}}))
