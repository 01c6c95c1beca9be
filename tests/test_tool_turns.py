"""What an agent framework sends back to coserve, checked at the edge (session 13's agent walk): a
``tool`` turn must answer a call of the assistant turn before it (as OpenAI's API requires), and a
function's ``parameters`` must describe an object (its arguments are one), through the real app over
fake experts. The expected answers are written out from OpenAI's rules, not from the code.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import HELD_OUT
from fastapi.testclient import TestClient

URL = "/v1/chat/completions"
QUESTION = {"role": "user", "content": HELD_OUT["code"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def calling(*ids: str) -> dict[str, Any]:
    """An assistant turn calling get_weather once per id."""
    calls = [{"id": i, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}} for i in ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "sunny"}


def post(client: TestClient, messages: list[dict[str, Any]], **fields: Any) -> Any:
    return client.post(URL, json={"model": "coserve", "messages": messages, "max_tokens": 2, **fields})


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([QUESTION, calling("c1"), result("zzz")], "messages[2].tool_call_id"),  # no such call
        ([QUESTION, result("c1")], "messages[1].tool_call_id"),  # no call before it at all
        ([QUESTION, calling("c1"), result("c1"), QUESTION, result("c1")], "messages[4].tool_call_id"),  # a user turn between
        ([QUESTION, calling("c1", "c2"), result("c1"), result("c3")], "messages[3].tool_call_id"),
    ],
)  # fmt: skip
def test_a_tool_turn_answering_no_call_before_it_is_a_400_naming_it(
    client: TestClient, messages: list[dict[str, Any]], param: str
) -> None:
    response = post(client, messages)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_request", "invalid_request_error")


def test_tool_turns_answering_the_calls_before_them_are_served(client: TestClient) -> None:
    """Two calls answered in either order, then a later round of calls with the same id reused."""
    messages = [QUESTION, calling("c1", "c2"), result("c2"), result("c1"), calling("c1"), result("c1")]
    response = post(client, messages, tools=[WEATHER])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("schema_type", ["string", "array", ["string", "null"]])
def test_parameters_that_do_not_describe_an_object_are_a_400(client: TestClient, schema_type: Any) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": schema_type}}}
    response = post(client, [QUESTION], tools=[tool], tool_choice="required")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "tools[0].function.parameters"


@pytest.mark.parametrize("parameters", [{"type": "object"}, {"type": ["object", "null"]}, {}, {"properties": {}}])
def test_parameters_describing_an_object_or_leaving_the_type_open_are_served(
    client: TestClient, parameters: dict[str, Any]
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    response = post(client, [QUESTION], tools=[tool], tool_choice="required", max_tokens=64)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"
