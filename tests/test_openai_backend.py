"""The OpenAI-compatible HTTP backend, against a real HTTP server: another coserve (fake experts)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import library_data
from fastapi.testclient import TestClient
from live import app_in_thread, free_port

from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app


@pytest.fixture
def upstream(make_engine: Callable[..., Engine]) -> Iterator[str]:
    """A real uvicorn server on loopback serving fake experts (slow ones: 'big' sleeps per token)."""
    engine = make_engine(options={"big": {"token_delay": 0.5}})
    with app_in_thread(engine) as url:
        yield url


def _remote_library(tmp_path: Path, base_url: str, **options: Any) -> Path:
    data = library_data()
    template = data["experts"][0]
    data["experts"] = [
        {**template, "name": "remote-coder", "backend": "openai", "params_b": 0.5, "tags": ["code"],
         "options": {"base_url": base_url, "model": "coder", **options}},
        {**template, "name": "remote-big", "backend": "openai", "params_b": 1.5, "tags": ["general"],
         "options": {"base_url": base_url, "model": "big", "read_timeout": 0.3}},
        {**template, "name": "local-small", "params_b": 0.1, "tags": ["chat"]},
    ]  # fmt: skip
    data["router"]["map"] = {"code": "remote-coder", "math": "remote-big", "chat": "local-small"}
    data["router"]["fallback"] = {"expert": "local-small", "min_confidence": 0.4}
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _ask(client: TestClient, model: str, text: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 5, "stream": stream}
    return client.post("/v1/chat/completions", json=body)


def test_remote_expert_answers_through_http(tmp_path: Path, upstream: str, cache: Path) -> None:
    engine = Engine.build(load_library(_remote_library(tmp_path, upstream)), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        response = _ask(client, "coserve", "write a python function to sort a list")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "remote-coder"
        # the upstream coserve answered with its own fake 'coder' expert
        assert body["choices"][0]["message"]["content"].startswith("coder says:")
        assert body["usage"]["completion_tokens"] == 5
        streamed = _ask(client, "remote-coder", "write python code", stream=True)
        assert streamed.status_code == 200
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
        assert text.startswith("coder says:")
        assert client.get("/health").json()["experts"]["remote-coder"]["tier"] == "active"


def test_remote_timeout_falls_back(tmp_path: Path, upstream: str, cache: Path) -> None:
    engine = Engine.build(load_library(_remote_library(tmp_path, upstream)), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        # 'remote-big' reads with a 0.3 s time-out from an expert that takes 0.5 s a token
        response = _ask(client, "coserve", "solve the equation x squared plus 3 x equals 10")
        assert response.status_code == 200, response.text
        assert response.json()["coserve"]["fallback_from"] == ["remote-big"]
        pinned = _ask(client, "remote-big", "solve the equation")
        assert pinned.status_code == 502 and pinned.json()["error"]["code"] == "expert_failed"


def test_unreachable_endpoint_is_a_load_failure(tmp_path: Path, cache: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    engine = Engine.build(load_library(_remote_library(tmp_path, dead)), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        response = _ask(client, "coserve", "write a python function to sort a list")
        assert response.status_code == 200
        assert response.json()["coserve"]["fallback_from"] == ["remote-coder"]
        pinned = _ask(client, "remote-coder", "write python code")
        assert pinned.status_code == 503


def test_missing_api_key_variable_is_a_load_failure(
    tmp_path: Path, upstream: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSERVE_TEST_KEY", raising=False)
    path = _remote_library(tmp_path, upstream, api_key_env="COSERVE_TEST_KEY")
    engine = Engine.build(load_library(path), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        response = _ask(client, "remote-coder", "write python code")
        assert response.status_code == 503
        assert "COSERVE_TEST_KEY" in response.json()["error"]["message"]


def test_logprobs_and_penalties_are_forwarded(tmp_path: Path, upstream: str, cache: Path) -> None:
    """The upstream coserve's fake 'coder' scripts its logprobs (word i: -0.125 * (i % 4); its
    alternatives 1 less each): they come back through the remote expert unchanged."""
    engine = Engine.build(load_library(_remote_library(tmp_path, upstream)), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        body = {
            "model": "remote-coder",
            "messages": [{"role": "user", "content": "write python code"}],
            "max_tokens": 3,
            "logprobs": True,
            "top_logprobs": 2,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
        }
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json={**body, "stream": stream})
            assert response.status_code == 200, response.text
            if stream:
                events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
                entries = [
                    e
                    for c in events
                    if c["choices"]
                    for e in (c["choices"][0].get("logprobs") or {}).get("content", [])
                ]
            else:
                entries = response.json()["choices"][0]["logprobs"]["content"]
            assert [(e["token"], e["logprob"]) for e in entries] == [
                ("coder", 0.0),
                (" says:", -0.125),
                (" write", -0.25),
            ]
            assert [[(t["token"], t["logprob"]) for t in e["top_logprobs"]] for e in entries][1] == [
                (" says:", -0.125),
                ("<alt1>", -1.125),
            ]


def test_tools_go_upstream_unchanged_and_the_calls_come_back(tmp_path: Path, upstream: str, cache: Path) -> None:
    """The upstream coserve's fake 'coder' answers a forced call with ``{"echo": <the last prompt
    word>}`` (coserve/backends/fake.py) and echoes every turn's words otherwise: the call, its
    stream and the tool turns of the history pass through the remote expert."""
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    engine = Engine.build(load_library(_remote_library(tmp_path, upstream)), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        body: dict[str, Any] = {
            "model": "remote-coder",
            "messages": [{"role": "user", "content": "write python code"}],
            "tools": [weather],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
        answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        call = answer["message"]["tool_calls"][0]
        assert (answer["finish_reason"], answer["message"]["content"]) == ("tool_calls", None)
        assert call["function"] == {"name": "get_weather", "arguments": '{"echo": "code"}'}
        assert call["id"].startswith("call_") and call["type"] == "function"
        text = client.post("/v1/chat/completions", json={**body, "stream": True}).text
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        deltas = [e["choices"][0]["delta"]["tool_calls"] for e in events if "tool_calls" in e["choices"][0]["delta"]]
        # the upstream streams a forced call's arguments in pieces as written; each is relayed as it came
        first, *pieces = [[{**d, "id": "x"} if "id" in d else d for d in delta] for delta in deltas]
        assert first == [
            {"index": 0, "id": "x", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ]
        assert len(pieces) > 1 and all(len(p) == 1 and set(p[0]) == {"index", "function"} for p in pieces)
        assert "".join(p[0]["function"]["arguments"] for p in pieces) == '{"echo": "code"}'
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
        history = [
            *body["messages"],
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]
        final = client.post(
            "/v1/chat/completions", json={**body, "messages": history, "tool_choice": "none", "max_tokens": 8}
        ).json()
        assert final["choices"][0]["message"]["content"] == "coder says: write python code sunny write python"
