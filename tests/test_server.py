"""The OpenAI-compatible HTTP server over fake experts: responses, SSE framing, errors, faults."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import HELD_OUT, library_data, write_library
from fastapi.testclient import TestClient

from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app

CODE = HELD_OUT["code"]
CHAT = HELD_OUT["chat"]
URL = "/v1/chat/completions"


@contextmanager
def serve(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    """A server over a fresh engine (for tests that look at residency, metrics or health)."""
    with serve(engine) as c:
        yield c


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One server for the tests that depend on no state (bad input, answers' shapes): faster."""
    folder = tmp_path_factory.mktemp("shared")
    engine = Engine.build(load_library(write_library(folder)), folder / "cache", embedder=HashingEmbedder())
    with serve(engine) as c:
        yield c


def body(content: str = CODE, model: str = "coserve", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        assert "\n" not in block, block  # one line per event
        out.append(block.removeprefix("data: "))
    return out


def chunks(text: str) -> list[dict[str, Any]]:
    payloads = events(text)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def assert_error(response: Any, status: int, code: str | None = None, param: str | None = "<any>") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code
    if param != "<any>":
        assert error["param"] == param
    return error


# -- non-streamed ---------------------------------------------------------------------------------


def test_chat_completion(client: TestClient) -> None:
    response = client.post(URL, json=body(CODE))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["model"] == "coder"
    (choice,) = data["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("coder says: write a python function")
    assert choice["finish_reason"] in {"stop", "length"}
    usage = data["usage"]
    assert usage["prompt_tokens"] == len(CODE.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    coserve = data["coserve"]
    assert set(coserve) == {"expert", "category", "confidence", "alternatives", "reason"}
    assert coserve["expert"] == "coder"
    assert coserve["category"] == "code"
    assert 0.4 <= coserve["confidence"] <= 1
    assert sorted(coserve["alternatives"]) == ["big", "small"]
    assert coserve["reason"] == "routed"
    assert response.headers["x-coserve-expert"] == "coder"
    assert response.headers["x-coserve-category"] == "code"
    assert "x-coserve-fallback-from" not in response.headers


def test_routes_by_category(shared: TestClient) -> None:
    for category, expert in (("code", "coder"), ("math", "big"), ("chat", "small")):
        data = shared.post(URL, json=body(HELD_OUT[category])).json()
        assert (data["model"], data["coserve"]["category"]) == (expert, category)


def test_max_tokens_bounds_the_answer(shared: TestClient) -> None:
    data = shared.post(URL, json=body(CODE, max_tokens=5)).json()
    assert data["usage"]["completion_tokens"] == 5
    assert len(data["choices"][0]["message"]["content"].split()) == 5
    assert data["choices"][0]["finish_reason"] == "length"
    data = shared.post(URL, json=body(CODE, max_completion_tokens=3)).json()
    assert data["usage"]["completion_tokens"] == 3  # max_completion_tokens: the same cap
    both = shared.post(URL, json=body(CODE, max_completion_tokens=3, max_tokens=50))  # which one? a 400 says
    assert both.status_code == 400 and both.json()["error"]["param"] == "max_completion_tokens"


def test_pinned_model(shared: TestClient) -> None:
    response = shared.post(URL, json=body(CODE, model="small"))
    assert response.status_code == 200
    data = response.json()
    assert data["model"] == "small"
    assert data["coserve"]["reason"] == "pinned"
    assert data["coserve"]["category"] is None
    assert data["coserve"]["alternatives"] == []
    assert response.headers["x-coserve-expert"] == "small"
    assert response.headers["x-coserve-category"] == ""


def test_an_unknown_expert_to_exclude_is_a_400(shared: TestClient) -> None:
    for model in ("coserve", "small"):
        response = shared.post(URL, json=body(CODE, model=model, coserve={"exclude_experts": ["nobody"]}))
        assert response.status_code == 400
        assert response.json() == {
            "error": {
                "message": "coserve.exclude_experts: unknown expert 'nobody'; the library's experts: small, coder, big",
                "type": "invalid_request_error",
                "param": "coserve.exclude_experts",
                "code": "invalid_request",
            }
        }


def test_constraints_apply(shared: TestClient) -> None:
    data = shared.post(URL, json=body(CODE, coserve={"exclude_experts": ["coder"]})).json()
    assert data["model"] != "coder"
    assert data["coserve"]["reason"] == "constrained"
    data = shared.post(URL, json=body(CODE, coserve={"max_params_b": 0.2})).json()
    assert data["model"] == "small"


def test_content_parts_and_developer_role(shared: TestClient) -> None:
    payload = {
        "model": "coserve",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "write a python "}, {"type": "text", "text": "function"}],
            },
        ],
    }
    response = shared.post(URL, json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "coder"


def test_text_parts_are_joined_by_a_newline(shared: TestClient) -> None:
    # Joined with nothing, "hello" and "there" reached the expert (and the router) as "hellothere".
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]
    payload = {"model": "small", "messages": [{"role": "user", "content": parts}], "max_tokens": 4}
    response = shared.post(URL, json=payload)
    assert response.json()["choices"][0]["message"]["content"] == "small says: hello there"


# -- streamed -------------------------------------------------------------------------------------


def test_stream(shared: TestClient) -> None:
    with shared.stream("POST", URL, json=body(CODE, stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-coserve-expert"] == "coder"
        text = response.read().decode()
    parsed = chunks(text)
    first = parsed[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["coserve"]["expert"] == "coder"
    assert first["coserve"]["category"] == "code"
    assert all(c["id"] == first["id"] and c["model"] == "coder" for c in parsed)
    assert all("coserve" not in c for c in parsed[1:])
    finals = [c for c in parsed if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0] is parsed[-1]
    assert finals[0]["choices"][0]["delta"] == {}
    assert not any("usage" in c for c in parsed)  # not asked for

    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in parsed)
    whole = shared.post(URL, json=body(CODE)).json()
    assert streamed == whole["choices"][0]["message"]["content"]
    assert finals[0]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_stream_with_usage(shared: TestClient) -> None:
    response = shared.post(URL, json=body(CODE, stream=True, max_tokens=4, stream_options={"include_usage": True}))
    parsed = chunks(response.text)
    usage_chunk = parsed[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": len(CODE.split()),
        "completion_tokens": 4,
        "total_tokens": len(CODE.split()) + 4,
    }
    assert parsed[-2]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in parsed if "usage" in c) == 1


def test_stream_pinned(shared: TestClient) -> None:
    parsed = chunks(shared.post(URL, json=body(CODE, model="big", stream=True)).text)
    assert parsed[0]["coserve"]["reason"] == "pinned"
    assert parsed[0]["model"] == "big"


# -- other endpoints ------------------------------------------------------------------------------


def test_models(client: TestClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids == ["coserve", "small", "coder", "big"]
    routed = data["data"][0]
    assert routed["coserve"]["routed"] is True
    assert routed["coserve"]["experts"] == ["small", "coder", "big"]
    coder = data["data"][2]
    assert coder["coserve"]["params_b"] == 0.5
    assert coder["coserve"]["tags"] == ["code"]
    assert coder["coserve"]["tier"] == "disk"


def test_one_model_by_its_id(client: TestClient) -> None:
    """OpenAI's "retrieve model" (``client.models.retrieve``): the list's entry, or a 404."""
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    for name in ("coserve", "small", "coder", "big"):
        response = client.get(f"/v1/models/{name}")
        assert response.status_code == 200
        assert {**response.json(), "created": 0} == {**listed[name], "created": 0}
    response = client.get("/v1/models/nobody")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model 'nobody' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_health(client: TestClient) -> None:
    data = client.get("/health").json()
    assert data["status"] == "ok"
    assert set(data["experts"]) == {"small", "coder", "big"}
    for state in data["experts"].values():
        assert (state["tier"], state["in_flight"]) == ("disk", 0)
    assert data["memory"]["active_bytes"] == 0
    assert data["memory"]["active_budget_bytes"] == 2**30
    client.post(URL, json=body(CODE))
    data = client.get("/health").json()
    assert (data["experts"]["coder"]["tier"], data["experts"]["coder"]["in_flight"]) == ("active", 0)
    assert data["experts"]["small"]["tier"] != "active"
    assert data["memory"]["active_bytes"] == 20 * 2**20


def test_metrics(client: TestClient) -> None:
    client.post(URL, json=body(CODE))
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert re.search(r'^coserve_requests_total\{status="200"\} 1\.0$', text, re.M)
    assert re.search(r'^coserve_decisions_total\{[^}]*expert="coder"[^}]*\} 1\.0$', text, re.M)
    assert re.search(r'^coserve_decisions_total\{[^}]*category="code"[^}]*reason="routed"[^}]*\} 1\.0$', text, re.M)
    assert re.search(r'^coserve_expert_loads_total\{expert="coder"\} 1\.0$', text, re.M)
    assert re.search(r'^coserve_tokens_total\{expert="coder",kind="prompt"\} [1-9]', text, re.M)


def test_metrics_count_errors(client: TestClient) -> None:
    client.post(URL, json=body(CODE, model="gpt-4"))
    assert re.search(r'^coserve_requests_total\{status="404"\} 1\.0$', client.get("/metrics").text, re.M)


# -- bad input ------------------------------------------------------------------------------------


def test_malformed_json(shared: TestClient) -> None:
    response = shared.post(
        URL, content=b'{"model": "coserve", "messages": [', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


def test_body_not_utf8(shared: TestClient) -> None:
    response = shared.post(URL, content=b"\xff\xfe{}", headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    "payload", [[], [1, 2], "text", 3, None], ids=["empty-array", "array", "string", "number", "null"]
)
def test_body_not_an_object(shared: TestClient, payload: Any) -> None:
    assert_error(shared.post(URL, content=json.dumps(payload).encode()), 400)


def test_missing_messages(shared: TestClient) -> None:
    assert_error(shared.post(URL, json={"model": "coserve"}), 400, "invalid_request", "messages")


def test_missing_model(shared: TestClient) -> None:
    assert_error(shared.post(URL, json={"messages": [{"role": "user", "content": "hi"}]}), 400, param="model")


def test_empty_messages(shared: TestClient) -> None:
    error = assert_error(shared.post(URL, json={"model": "coserve", "messages": []}), 400, param="messages")
    assert "at least one message" in error["message"]


def test_unknown_role(shared: TestClient) -> None:
    payload = {"model": "coserve", "messages": [{"role": "robot", "content": "hi"}]}
    assert_error(shared.post(URL, json=payload), 400, "invalid_request", "messages[0].role")


def test_wrong_type(shared: TestClient) -> None:
    assert_error(shared.post(URL, json=body(CODE, max_tokens="many")), 400, param="max_tokens")
    assert_error(shared.post(URL, json=body(CODE, stream="yes please")), 400, param="stream")


def test_image_content_part_is_refused(shared: TestClient) -> None:
    payload = {"model": "coserve", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    assert_error(shared.post(URL, json=payload), 400)


def test_unknown_model(shared: TestClient) -> None:
    assert_error(shared.post(URL, json=body(CODE, model="gpt-4o")), 404, "model_not_found", "model")


@pytest.mark.parametrize("content", ["", "   \n"])
def test_empty_user_content(shared: TestClient, content: str) -> None:
    assert_error(shared.post(URL, json=body(content)), 422, "unprocessable", "messages[0].content")


def test_no_user_message(shared: TestClient) -> None:
    payload = {"model": "coserve", "messages": [{"role": "system", "content": "be nice"}]}
    assert_error(shared.post(URL, json=payload), 422, param="messages")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 3),
        ("temperature", -0.1),
        ("top_p", 0),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("max_tokens", 100_000),
        ("max_completion_tokens", 0),
        ("n", 0),  # n > 1: refused with a 400 (tests/test_params.py)
        ("stop", ["a", "b", "c", "d", "e"]),
    ],
)
def test_out_of_range(shared: TestClient, field: str, value: Any) -> None:
    assert_error(shared.post(URL, json=body(CODE, **{field: value})), 422, "unprocessable", field)


@pytest.mark.parametrize(("field", "value"), [("temperature", 0), ("temperature", 2), ("top_p", 1), ("n", 1)])
def test_in_range_limits(shared: TestClient, field: str, value: Any) -> None:
    assert shared.post(URL, json=body(CODE, **{field: value})).status_code == 200


def test_unknown_key_in_coserve_options(shared: TestClient) -> None:
    error = assert_error(shared.post(URL, json=body(CODE, coserve={"max_param": 1})), 400)
    assert error["param"] == "coserve.max_param"


def test_invalid_constraint_value(shared: TestClient) -> None:
    assert_error(shared.post(URL, json=body(CODE, coserve={"max_params_b": -1})), 400, param="coserve.max_params_b")


def test_infeasible_constraints(shared: TestClient) -> None:
    response = shared.post(URL, json=body(CODE, coserve={"max_params_b": 0.01}))
    assert_error(response, 422, "infeasible_constraints", "coserve.max_params_b")
    response = shared.post(URL, json=body(CODE, model="big", coserve={"require_tags": ["code"]}))
    assert_error(response, 422, "infeasible_constraints", "coserve.require_tags")


def test_unknown_path(shared: TestClient) -> None:
    assert_error(shared.get("/v1/nothing"), 404, "not_found", None)
    assert_error(shared.post("/v1/nothing/", json={}), 404, "not_found", None)


def test_trailing_slash(shared: TestClient) -> None:
    """A POST to a route with a trailing slash is a 404 that names the route (a redirected POST loses its body
    in many clients); a GET is redirected there, its query kept."""
    response = shared.post(URL + "/", json=body(CODE))
    assert_error(response, 404, "not_found", None)
    assert "/v1/chat/completions (no trailing slash)" in response.json()["error"]["message"]
    response = shared.get("/v1/models/?x=1", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/v1/models?x=1"
    assert shared.get("/v1/models/").status_code == 200


def test_wrong_method(shared: TestClient) -> None:
    assert_error(shared.get(URL), 405, "method_not_allowed")


def test_deeply_nested_json_is_a_400(shared: TestClient) -> None:
    response = shared.post(URL, content=b"[" * 100_000 + b"]" * 100_000)
    assert_error(response, 400, "invalid_json")


def test_lone_surrogate_is_a_4xx(shared: TestClient) -> None:
    response = shared.post(URL, content=b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}')
    assert 400 <= response.status_code < 500, response.text


# -- context length -------------------------------------------------------------------------------


def test_prompt_longer_than_every_context(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(all_fields={"context": 128})
    with serve(engine) as client:
        prompt = " ".join(["word"] * 500)
        assert_error(client.post(URL, json=body(prompt)), 413, "context_length_exceeded", "messages")
        assert_error(client.post(URL, json=body(prompt, model="small")), 413, "context_length_exceeded")
        assert_error(client.post(URL, json=body(prompt, stream=True)), 413)


def test_prompt_too_long_for_one_expert_moves_to_a_larger_one(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(fields={"small": {"context": 128}})
    with serve(engine) as client:
        prompt = CHAT + " " + " ".join(["hello friend"] * 100)  # 207 words: over small's 128
        data = client.post(URL, json=body(prompt)).json()
        assert data["coserve"]["category"] == "chat"
        assert data["model"] in {"coder", "big"}
        assert data["coserve"]["fallback_from"] == ["small"]


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["fail_load", "fail_generate"])
def test_routed_request_falls_back_to_the_next_alternative(make_engine: Callable[..., Engine], fault: str) -> None:
    engine = make_engine(options={"coder": {fault: True}})
    with serve(engine) as client:
        response = client.post(URL, json=body(CODE))
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["coserve"]["category"] == "code"
        assert data["coserve"]["fallback_from"] == ["coder"]
        assert data["model"] == data["coserve"]["alternatives"][0]
        assert data["coserve"]["expert"] == data["model"]
        assert data["choices"][0]["message"]["content"].startswith(f"{data['model']} says:")
        assert response.headers["x-coserve-fallback-from"] == "coder"
        assert response.headers["x-coserve-expert"] == data["model"]
        metrics = client.get("/metrics").text
        assert re.search(
            rf'^coserve_fallbacks_total\{{from_expert="coder",to_expert="{data["model"]}"\}} 1\.0$', metrics, re.M
        )


def test_streamed_request_falls_back_too(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_generate": True}})
    with serve(engine) as client:
        parsed = chunks(client.post(URL, json=body(CODE, stream=True)).text)
        assert parsed[0]["coserve"]["fallback_from"] == ["coder"]
        assert parsed[0]["model"] != "coder"


def test_every_expert_failing(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(all_fields={"options": {"fail_load": True}})
    with serve(engine) as client:
        assert_error(client.post(URL, json=body(CODE)), 503, "expert_unavailable")
        assert client.get("/health").json()["memory"]["active_bytes"] == 0


@pytest.mark.parametrize(
    ("fault", "status", "code", "then"),
    [
        ("fail_load", 503, "expert_unavailable", "expert_backoff"),  # a failed load puts the expert in backoff
        ("fail_generate", 502, "expert_failed", "expert_failed"),
    ],
)
def test_pinned_request_to_a_failing_expert(
    make_engine: Callable[..., Engine], fault: str, status: int, code: str, then: str
) -> None:
    engine = make_engine(options={"coder": {fault: True}})
    with serve(engine) as client:
        assert_error(client.post(URL, json=body(CODE, model="coder")), status, code)
        assert_error(client.post(URL, json=body(CODE, model="coder", stream=True)), status, then)
        assert client.post(URL, json=body(CODE, model="small")).status_code == 200  # others still serve
        assert client.get("/health").json()["experts"]["coder"]["in_flight"] == 0


def test_stream_failing_mid_way(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_after_tokens": 2}})
    with serve(engine) as client:
        response = client.post(URL, json=body(CODE, stream=True))
        assert response.status_code == 200
        payloads = events(response.text)
        assert payloads[-1] == "[DONE]"
        parsed = [json.loads(p) for p in payloads[:-1]]
        assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
        content = parsed[1:-1]
        assert [c["choices"][0]["delta"]["content"] for c in content] == ["coder", " says:"]
        assert set(parsed[-1]) == {"error"}
        assert parsed[-1]["error"]["code"] == "expert_failed"
        assert not any(c.get("choices") and c["choices"][0]["finish_reason"] for c in parsed)
        assert client.get("/health").json()["experts"]["coder"]["in_flight"] == 0
        assert re.search(r'^coserve_requests_total\{status="stream_error"\} 1\.0$', client.get("/metrics").text, re.M)


def test_non_streamed_request_failing_mid_way(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_after_tokens": 2}})
    with serve(engine) as client:
        assert_error(client.post(URL, json=body(CODE)), 502, "expert_failed")


def test_non_ascii_category_name_is_refused_by_the_library(make_engine: Callable[..., Engine]) -> None:
    """Category names travel in the x-coserve-category header: the library file refuses non-ASCII ones."""
    data = library_data()
    data["categories"]["代码"] = data["categories"].pop("code")
    data["router"]["map"] = {"代码": "coder", "math": "big", "chat": "small"}
    with pytest.raises(ConfigError, match=r"categories.*代码"):
        make_engine(categories=data["categories"], router=data["router"])
