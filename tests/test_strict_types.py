"""Strict request types at the HTTP edge: no string taken for a bool or a number, no bool for a number.

Each refused body gets a 400 with an OpenAI-style error naming the field (``param``); the correct
forms still work (fields coserve does not serve are refused: tests/test_params.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import HELD_OUT
from fastapi.testclient import TestClient

URL = "/v1/chat/completions"


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "coserve", "messages": [{"role": "user", "content": HELD_OUT["chat"]}], **fields}


# (body fields, the param the error must name, the JSON type the client sent)
MISTYPED = [
    ({"stream": "yes"}, "stream", "a string"),
    ({"stream": "true"}, "stream", "a string"),
    ({"stream": 1}, "stream", "an integer"),
    ({"n": True}, "n", "a boolean"),
    ({"n": "1"}, "n", "a string"),
    ({"max_tokens": "2"}, "max_tokens", "a string"),
    ({"max_tokens": True}, "max_tokens", "a boolean"),
    ({"max_tokens": 2.5}, "max_tokens", "a number"),
    ({"max_tokens": 2.0}, "max_tokens", "a number"),  # an integer field takes no fractional number
    ({"max_completion_tokens": "2"}, "max_completion_tokens", "a string"),
    ({"temperature": "0.5"}, "temperature", "a string"),
    ({"temperature": False}, "temperature", "a boolean"),
    ({"top_p": "1"}, "top_p", "a string"),
    ({"seed": "7"}, "seed", "a string"),
    ({"seed": 7.0}, "seed", "a number"),
    ({"frequency_penalty": "0.5"}, "frequency_penalty", "a string"),
    ({"presence_penalty": True}, "presence_penalty", "a boolean"),
    ({"logprobs": 1}, "logprobs", "an integer"),
    ({"logprobs": True, "top_logprobs": "2"}, "top_logprobs", "a string"),
    ({"model": 3}, "model", "an integer"),
    ({"user": 5}, "user", "an integer"),
    ({"stop": 5}, "stop", "an integer"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "a string"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage", "an integer"),
    ({"coserve": {"max_params_b": "3"}}, "coserve.max_params_b", "a string"),
    ({"coserve": {"min_context": True}}, "coserve.min_context", "a boolean"),
    ({"coserve": {"exclude_experts": "coder"}}, "coserve.exclude_experts", "a string"),
]


@pytest.mark.parametrize(("fields", "param", "sent"), MISTYPED, ids=[p for _, p, _ in MISTYPED])
def test_a_mistyped_field_is_a_400_naming_it(client: TestClient, fields: dict[str, Any], param: str, sent: str) -> None:
    response = client.post(URL, json=chat(**fields))
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": "invalid_request",
        }
    }
    message = response.json()["error"]["message"]
    assert message.startswith(f"{param}: ") and message.endswith(f", not {sent}"), message
    assert "text/event-stream" not in response.headers["content-type"]


def test_a_mistyped_message_names_its_place(client: TestClient) -> None:
    bad_content = {"model": "coserve", "messages": [{"role": "user", "content": 5}]}
    error = client.post(URL, json=bad_content).json()["error"]
    assert error["param"] == "messages[0].content" and error["message"].endswith(", not an integer")
    bad_part = {"model": "coserve", "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}
    error = client.post(URL, json=bad_part).json()["error"]
    assert error["param"] == "messages[0].content[0].text" and error["message"].endswith(", not an integer")
    missing = client.post(URL, json={"messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"


def test_the_correct_forms_still_work(client: TestClient) -> None:
    fields = {
        "stream": False,
        "n": 1,
        "max_tokens": 2,
        "temperature": 0.5,
        "top_p": 1,  # an integer is a valid number
        "seed": 7,
        "stop": ["\n\n"],
        "user": "someone",
        "coserve": {"max_params_b": 100, "min_context": 1},
        "logprobs": False,
        "frequency_penalty": 0,  # an integer is a valid number
    }
    response = client.post(URL, json=chat(**fields))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 2
    streamed = client.post(URL, json=chat(stream=True, stream_options={"include_usage": True}, max_tokens=2))
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.endswith("data: [DONE]\n\n") and '"usage":{"prompt_tokens"' in streamed.text
    assert client.post(URL, json=chat(temperature=1)).status_code == 200


@pytest.mark.parametrize(("score", "sent"), [("0.5", "a string"), (True, "a boolean")])
def test_feedback_score_is_strict(client: TestClient, score: Any, sent: str) -> None:
    response = client.post("/v1/feedback", json={"id": "chatcmpl-x", "score": score})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == ("score", "invalid_request_error")
    assert error["message"] == f"score: Input should be a valid number, not {sent}"
