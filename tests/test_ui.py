"""The dashboard's server side (no browser): the page and its files, the key on its data endpoints,
the experts' state, the map and front, the prompt box's routing, and the decision feed (bounded,
never blocking). The page itself is driven in a real browser in test_ui_browser.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from asgi import chunks_read_before_refusal
from conftest import HELD_OUT
from fastapi.testclient import TestClient
from live import LiveServer

from coserve.config import load_library
from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app
from coserve.server.auth import hash_key
from coserve.server.feed import DecisionFeed
from coserve.types import ROUTED_MODEL, Decision, Message, Request
from tests.test_measured_map import TABLE, measured_library

KEY = "sk-ui-test-key"
DATA = ("/ui/api/state", "/ui/api/map", "/ui/api/events")
CHAT = "/v1/chat/completions"


@contextmanager
def serve(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        yield client


def chat(model: str, text: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}


def test_the_page_and_its_files_are_served_without_a_key(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(server={"api_keys": [hash_key(KEY)]})
    with serve(engine) as client:
        files = [("/ui", "text/html"), ("/ui/static/app.js", "text/javascript"), ("/ui/static/style.css", "text/css")]
        for path, kind in files:
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(kind)
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="/ui/static/app.js">' in client.get("/ui").text
        missing = client.get("/ui/static/secrets.txt")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/ui/static/..%2Fapp.py").status_code == 404


def test_keyed_server_refuses_the_data_without_the_key(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(server={"api_keys": [hash_key(KEY)]})  # protect_metrics off: the UI is keyed anyway
    with serve(engine) as client:
        for path in DATA:
            for headers in ({}, {"authorization": "Bearer sk-wrong"}, {"authorization": KEY}):
                response = client.get(path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["type"] == "invalid_request_error"
                assert KEY not in response.text
        refused = client.post("/ui/api/route", json={"prompt": "hello"})
        assert refused.status_code == 401
        good = {"authorization": f"Bearer {KEY}"}
        assert client.get("/ui/api/state", headers=good).status_code == 200
        assert client.get("/ui/api/map", headers=good).status_code == 200
        assert client.post("/ui/api/route", json={"prompt": "hello"}, headers=good).status_code == 200
        assert KEY not in client.get("/ui").text


def test_state_shows_each_expert_and_a_load_moves_it_to_active(make_engine: Callable[..., Engine]) -> None:
    with serve(make_engine()) as client:
        before = {e["name"]: e for e in client.get("/ui/api/state").json()["experts"]}
        assert list(before) == ["small", "coder", "big"]  # the library's order
        assert before["coder"]["tier"] != "active" and before["coder"]["loads"] == 0
        assert (before["coder"]["backend"], before["coder"]["params_b"]) == ("fake", 0.5)
        assert client.post(CHAT, json=chat("coder", "hi")).status_code == 200
        state = client.get("/ui/api/state").json()
        after = {e["name"]: e for e in state["experts"]}
        assert after["coder"]["tier"] == "active"
        assert after["coder"]["loads"] == 1
        assert (after["coder"]["in_flight"], after["coder"]["queued"], after["coder"]["last_error"]) == (0, 0, None)
        assert state["memory"]["active_bytes"] >= 20 * 2**20  # the coder's fake weights are 20 MiB
        assert state["status"] == "ok" and state["pending"] == 0


def test_a_failed_load_shows_its_error(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_load": True}})
    with serve(engine) as client:
        client.post(CHAT, json=chat("coder", "hi"))
        coder = next(e for e in client.get("/ui/api/state").json()["experts"] if e["name"] == "coder")
        assert coder["tier"] != "active" and coder["load_failures"] == 1
        assert coder["last_error"]


def test_route_gives_the_decision_and_probabilities_without_generating(make_engine: Callable[..., Engine]) -> None:
    with serve(make_engine()) as client:
        for category, expert in [("code", "coder"), ("math", "big"), ("chat", "small")]:
            body = client.post("/ui/api/route", json={"prompt": HELD_OUT[category]}).json()
            assert (body["category"], body["expert"], body["reason"]) == (category, expert, "routed")
            assert set(body["probabilities"]) == {"code", "math", "chat"}
            assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-3
            assert max(body["probabilities"], key=body["probabilities"].get) == category
        state = client.get("/ui/api/state").json()
        assert all(e["loads"] == 0 for e in state["experts"])  # nothing was generated, nothing loaded
        assert 'coserve_decisions_total{category="code"' not in client.get("/metrics").text


@pytest.mark.parametrize(
    ("body", "param"),
    [(b"not json", None), (b"[]", "prompt"), (b'{"prompt": ""}', "prompt"), (b'{"prompt": 3}', "prompt")],
)
def test_route_refuses_bad_bodies(make_engine: Callable[..., Engine], body: bytes, param: str | None) -> None:
    with serve(make_engine()) as client:
        response = client.post("/ui/api/route", content=body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


def test_route_reads_a_body_no_further_than_past_the_limit(make_engine: Callable[..., Engine]) -> None:
    """Session 12's walk: /ui/api/route read a body of any length whole before refusing the prompt."""
    engine = make_engine(server={"max_body_bytes": "2KiB"})
    sent, pulled = chunks_read_before_refusal(create_app(engine, close_engine=False), engine.close, "/ui/api/route")
    assert sent[0]["status"] == 400
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]["code"] == "body_too_large"
    assert pulled == 3  # 3 KiB is past 2 KiB: it read no further (it read all 1000 before)


def test_map_of_a_hand_written_library_has_no_measured_table(make_engine: Callable[..., Engine]) -> None:
    with serve(make_engine()) as client:
        body = client.get("/ui/api/map").json()
        assert body["map"] == {"code": "coder", "math": "big", "chat": "small"}
        assert body["fallback"] == {"expert": "big", "min_confidence": 0.4}
        assert body["measured"] is None


def test_map_of_a_measured_library_has_its_table_and_operating_point(tmp_path: Path, cache: Path) -> None:
    engine = Engine.build(load_library(measured_library(tmp_path, budget=0.7)), cache, embedder=HashingEmbedder())
    with serve(engine) as client:
        body = client.get("/ui/api/map").json()
    measured = body["measured"]
    assert body["map"] == {"code": "coder", "math": "big", "chat": "small"}
    assert measured["experts"] == ["small", "coder", "big"] and measured["unit"] == "B params"
    for k, category in enumerate(measured["categories"]):
        assert measured["S"][k] == pytest.approx([TABLE[category][e] for e in measured["experts"]])
    current = measured["maps"][0]
    assert current["budget"] == 0.7
    assert current["quality"] == pytest.approx((0.7 + 0.6 + 0.5) / 3)  # coder on code, big on math, small on chat
    assert current["avg_cost"] == pytest.approx((0.5 + 1.5 + 0.1) / 3)
    assert measured["singles"]["big"] == pytest.approx({"avg_cost": 1.5, "quality": (0.8 + 0.6 + 0.55) / 3})


def routed_call(expert: str = "coder") -> Call:
    call = Call(Request((Message("user", "x"),), ROUTED_MODEL))
    call.decision = Decision(expert, "code", 0.9, ("big",), "routed", {"code": 0.9})
    call.status = "200"
    return call


def test_feed_drops_for_a_full_subscriber_and_never_blocks() -> None:
    feed = DecisionFeed(queue_events=2)

    async def run() -> tuple[int, int, list[str], int]:
        with feed.subscribe() as slow, feed.subscribe() as fast:
            calls = [routed_call(name) for name in ("small", "coder", "big")]
            for call in calls:
                feed.publish(call)  # synchronous: returns even though ``slow`` reads nothing
                if call is calls[0]:
                    await fast.queue.get()
            got = [(await fast.queue.get())["expert"] for _ in range(2)]
            return slow.queue.qsize(), slow.dropped, got, feed.subscribers

    size, dropped, got, subscribers = asyncio.run(run())
    assert (size, dropped, got, subscribers) == (2, 1, ["coder", "big"], 2)
    assert feed.subscribers == 0  # left with the ``with`` block
    never_routed = Call(Request((Message("user", "x"),), ROUTED_MODEL))
    feed.publish(never_routed)
    assert [e["expert"] for e in feed.recent] == ["small", "coder", "big"]


def test_settled_requests_reach_the_feed_without_their_text(make_engine: Callable[..., Engine]) -> None:
    with serve(make_engine()) as client:
        feed = client.app.state.server.outcomes.feed  # type: ignore[attr-defined]
        assert client.post(CHAT, json=chat(ROUTED_MODEL, HELD_OUT["math"])).status_code == 200
        assert client.post(CHAT, json=chat("small", "pinned")).status_code == 200
        routed, pinned = list(feed.recent)
    assert (routed["category"], routed["expert"], routed["reason"]) == ("math", "big", "routed")
    assert routed["status"] == "200"
    assert routed["fallback_from"] == [] and routed["completion_tokens"] >= 1
    assert routed["ttft_s"] is not None and routed["ttft_s"] <= routed["latency_s"]
    assert (pinned["expert"], pinned["category"], pinned["reason"]) == ("small", None, "pinned")
    assert HELD_OUT["math"] not in json.dumps(routed)


def test_the_feed_streams_over_sse_and_ends_when_the_server_drains(tmp_path: Path) -> None:
    with LiveServer(tmp_path) as live, httpx.Client(base_url=live.url, timeout=10.0) as client:
        with client.stream("GET", "/ui/api/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = (line for line in events.iter_lines() if line)
            assert next(lines).startswith(": ")  # the opening comment: subscribed
            assert client.post(CHAT, json=chat(ROUTED_MODEL, HELD_OUT["code"])).status_code == 200
            assert next(lines) == "event: decision"
            event = json.loads(next(lines).removeprefix("data: "))
            live.terminate()  # SIGTERM: the open feed must end, or the drain would wait for it
            assert list(lines) == []  # the stream ended (a stuck one would raise ReadTimeout)
        assert live.proc is not None and live.proc.wait(timeout=live.shutdown_timeout) == 0
    assert (event["category"], event["expert"], event["dropped"]) == ("code", "coder", 0)
