"""Every chat-completions parameter is honoured or refused, never ignored (issue 18, item 5).

Through the real FastAPI app over fake experts: each parameter coserve does not serve is a 400
naming it (``unsupported_parameter``), an unknown one too (``unknown_parameter``) unless the
library's ``server.unknown_parameters`` is ``ignore``; the honoured ones take effect. The fake's
answer is ``"<expert> says: "`` and the prompt's words (coserve/backends/fake.py), so the expected
texts and token counts below are written out from the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import HELD_OUT
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI

from coserve.engine.engine import Engine
from coserve.server.app import create_app

URL = "/v1/chat/completions"
PROMPT = HELD_OUT["chat"]  # routed to the expert "small": "hello friend how are you this morning"


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "coserve", "messages": [{"role": "user", "content": PROMPT}], **fields}


# Each: the body fields, the parameter the 400 must name, its code.
REFUSED = [
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"store": True}, "store"),
    ({"metadata": {"k": "v"}}, "metadata"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"verbosity": "low"}, "verbosity"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"n": 2}, "n"),
]


@pytest.mark.parametrize(("fields", "param"), REFUSED, ids=[f"{p}={json.dumps(f[p])}" for f, p in REFUSED])
def test_a_parameter_coserve_does_not_serve_is_a_400_naming_it(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    for stream in (False, True):
        response = client.post(URL, json=chat(stream=stream, **fields))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            param,
            "unsupported_parameter",
        )
        assert error["message"].startswith(f"{param}: ")


def test_an_unknown_parameter_is_a_400_naming_it(client: TestClient) -> None:
    response = client.post(URL, json=chat(unknown_param=5))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "unknown_param",
        "unknown_parameter",
    )
    assert error["message"].startswith("unknown_param: unknown parameter")


def test_the_library_may_let_unknown_parameters_through_but_not_refused_ones(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(server={"unknown_parameters": "ignore"})
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        assert client.post(URL, json=chat(unknown_param=5, max_tokens=2)).status_code == 200
        refused = client.post(URL, json=chat(functions=[{"name": "f"}]))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "functions"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("function_call", {"name": "f", "arguments": "{}"}),
        ("refusal", "no"),
        ("audio", {"id": "a1"}),
    ],
)
def test_a_message_field_coserve_does_not_serve_is_a_400_naming_it(client: TestClient, field: str, value: Any) -> None:
    messages = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "ok", field: value},
        {"role": "user", "content": PROMPT},
    ]
    response = client.post(URL, json={"model": "coserve", "messages": messages})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (f"messages[1].{field}", "unsupported_parameter")
    echoed = {"role": "assistant", "content": "ok", "refusal": None, "tool_calls": None, "annotations": []}
    history = [messages[0], echoed, messages[2]]
    assert client.post(URL, json={"model": "coserve", "messages": history, "max_tokens": 2}).status_code == 200


NEUTRAL = {
    "tools": None,
    "tool_choice": "none",  # parallel_tool_calls without tools is a 400, as OpenAI's (test_tool_call_ids.py)
    "function_call": "none",
    "response_format": {"type": "text"},
    "logit_bias": {},
    "modalities": ["text"],
    "store": False,
    "service_tier": "auto",
    "audio": None,
    "n": 1,
    "user": "someone",
    "safety_identifier": "someone",
    "prompt_cache_key": "k",
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "seed": 3,
    "logprobs": False,
}


def test_values_that_ask_for_nothing_are_accepted(client: TestClient) -> None:
    response = client.post(URL, json=chat(max_tokens=2, **NEUTRAL))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "small says:"


# docs/api.md's table: every chat-completions parameter but model and messages; null asks for nothing.
NULLABLE = (
    "stream stream_options max_completion_tokens max_tokens temperature top_p seed stop presence_penalty "
    "frequency_penalty logprobs top_logprobs n user safety_identifier prompt_cache_key coserve tools tool_choice "
    "parallel_tool_calls response_format functions function_call logit_bias modalities audio prediction metadata "
    "reasoning_effort verbosity web_search_options store service_tier"
).split()


@pytest.mark.parametrize("name", NULLABLE)
def test_null_is_accepted_for_every_parameter(client: TestClient, name: str) -> None:
    fields = {"max_tokens": 2, name: None} if name != "max_tokens" else {"max_completion_tokens": 2, name: None}
    response = client.post(URL, json=chat(**fields))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "small says:"


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"top_logprobs": 2}, "top_logprobs", 400),  # without logprobs
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs", 400),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", 422),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", 422),
        ({"presence_penalty": 2.5}, "presence_penalty", 422),
        ({"frequency_penalty": -2.01}, "frequency_penalty", 422),
        ({"n": 0}, "n", 422),
        ({"max_tokens": 3, "max_completion_tokens": 4}, "max_completion_tokens", 400),
        ({"stream_options": {"include_usage": True}}, "stream_options", 400),  # without stream: was ignored
        ({"stream": False, "stream_options": {"include_usage": False}}, "stream_options", 400),
        (
            {"stream_options": {"include_usage": True, "include_obfuscation": True}},
            "stream_options.include_obfuscation",
            400,
        ),
    ],
)
def test_bad_values_of_honoured_parameters(client: TestClient, fields: dict[str, Any], param: str, status: int) -> None:
    response = client.post(URL, json=chat(**fields))
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_max_completion_tokens_caps_the_answer_as_max_tokens_does(client: TestClient) -> None:
    for fields in ({"max_completion_tokens": 3}, {"max_tokens": 3}, {"max_tokens": 3, "max_completion_tokens": 3}):
        body = client.post(URL, json=chat(**fields)).json()
        assert body["choices"][0]["message"]["content"] == "small says: hello", fields
        assert (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]) == (3, "length")


def test_stop_cuts_the_answer(client: TestClient) -> None:
    body = client.post(URL, json=chat(stop=[" friend"], max_tokens=10)).json()
    assert body["choices"][0]["message"]["content"] == "small says: hello"
    assert body["choices"][0]["finish_reason"] == "stop"


def _events(text: str) -> list[Any]:
    lines = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_include_usage_adds_the_usage_chunk_last_and_only_when_asked(client: TestClient) -> None:
    with_usage = _events(
        client.post(URL, json=chat(stream=True, max_tokens=3, stream_options={"include_usage": True})).text
    )
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert all("usage" not in event for event in with_usage[:-1])
    for options in ({"include_usage": False}, None):
        events = _events(client.post(URL, json=chat(stream=True, max_tokens=3, stream_options=options)).text)
        assert all("usage" not in event and event["choices"] for event in events)
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "small says: hello"


def test_a_request_for_logprobs_is_routed_to_an_expert_that_can_give_them(
    make_engine: Callable[..., Engine],
) -> None:
    """The fake's ``logprobs: false`` stands for a runtime without them (as ``transformers``)."""
    engine = make_engine(options={"small": {"logprobs": False}})
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        plain = client.post(URL, json=chat(max_tokens=2)).json()
        assert plain["coserve"]["expert"] == "small"
        asked = client.post(URL, json=chat(max_tokens=2, logprobs=True)).json()
        assert asked["coserve"]["expert"] != "small" and asked["coserve"]["reason"] == "constrained"
        assert len(asked["choices"][0]["logprobs"]["content"]) == 2
        pinned = client.post(URL, json=chat(model="small", logprobs=True))
        assert pinned.status_code == 422 and pinned.json()["error"]["param"] == "logprobs"


def test_a_capability_no_expert_has_is_a_422_naming_it(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={name: {"logprobs": False} for name in ("small", "coder", "big")})
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        response = client.post(URL, json=chat(logprobs=True))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("logprobs", "infeasible_constraints")
        assert error["message"] == "logprobs: no expert can serve it (none has 'logprobs')"
        assert client.post(URL, json=chat(logprobs=False, max_tokens=2)).status_code == 200


def test_a_backend_refuses_what_it_cannot_apply_even_if_sent_there() -> None:
    """The backend's own check (chores.refuse_sampling), behind the routing: a 400 naming it."""
    from coserve.backends.fake import FakeBackend
    from coserve.config import ExpertSpec
    from coserve.errors import InvalidRequest
    from coserve.types import Message, Sampling

    spec = ExpertSpec.model_validate(
        {"name": "x", "backend": "fake", "params_b": 0.1, "context": 128, "options": {"logprobs": False}}
    )
    backend = FakeBackend()
    handle = backend.load(spec, backend.stage(spec, None))
    with pytest.raises(InvalidRequest) as refused:
        backend.stream(handle, (Message("user", "hi"),), Sampling(logprobs=True), lambda chunk: False)
    assert (refused.value.param, refused.value.code, refused.value.status) == ("logprobs", "unsupported_parameter", 400)


def test_the_openai_client_sends_extra_body_coserve_at_the_top_level(client: TestClient) -> None:
    """``extra_body={"coserve": {...}}`` arrives as a top-level ``coserve`` field (accepted), and
    the client's own parameters coserve refuses come back as its BadRequestError."""
    openai = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    messages: Any = [{"role": "user", "content": PROMPT}]
    reply = openai.chat.completions.create(
        model="coserve", messages=messages, max_completion_tokens=2, extra_body={"coserve": {"max_params_b": 1}}
    )
    assert reply.choices[0].message.content == "small says:"
    with pytest.raises(BadRequestError) as refused:
        openai.chat.completions.create(model="coserve", messages=messages, logit_bias={"50256": -100})
    assert refused.value.param == "logit_bias"
    with pytest.raises(BadRequestError) as infeasible:
        openai.chat.completions.create(model="coserve", messages=messages, extra_body={"coserve": {"bogus": 1}})
    assert infeasible.value.param == "coserve.bogus"
