"""What an agent framework sends back to coserve, checked at the edge (session 13's agent walk): a
``tool`` turn must answer a call of the assistant turn before it (as OpenAI's API requires), and a
function's ``parameters`` must describe an object (its arguments are one), through the real app over
fake experts. The expected answers are written out from OpenAI's rules, not from the code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import HELD_OUT
from fastapi.testclient import TestClient
from tool_messages import QUESTION, URL, WEATHER, calling, post, result

from coserve.backends.structured import grammar
from coserve.engine.engine import Engine
from coserve.server.app import create_app
from coserve.types import Sampling


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([QUESTION, calling("c1"), result("zzz")], "messages[2].tool_call_id"),  # no such call
        ([QUESTION, result("c1")], "messages[1].tool_call_id"),  # no call before it at all
        ([QUESTION, calling("c1"), result("c1"), QUESTION, result("c1")], "messages[4].tool_call_id"),  # user between
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


@pytest.mark.parametrize(
    "fields", [{}, {"tools": [WEATHER], "tool_choice": "none"}], ids=["no tools", "tool_choice none"]
)
def test_a_conversation_carrying_tool_calls_goes_only_to_experts_that_render_them(
    make_engine: Callable[..., Engine], fields: dict[str, Any]
) -> None:
    """'small' (the chat prompt's first choice) declares no tools, as an expert whose chat template
    drops an assistant turn's calls (SmolLM2's): a history with calls and their results must not go
    there even when the request itself asks for no call, or the model would read results of calls
    it cannot see. Pinned to it: 422 naming ``tools``. Without the calls the prompt stays on 'small'."""
    engine = make_engine(fields={"small": {"capabilities": ["logprobs"]}})
    chat = {"role": "user", "content": HELD_OUT["chat"]}
    history = [chat, calling("c1"), result("c1"), chat]
    with TestClient(create_app(engine)) as client:
        assert post(client, [chat], **fields).json()["coserve"]["expert"] == "small"
        routed = post(client, history, **fields).json()["coserve"]
        assert routed["expert"] != "small"
        assert (routed["reason"], routed["narrowed_by"]) == ("constrained", ["tools"])
        pinned = client.post(URL, json={"model": "small", "messages": history, **fields})
        assert pinned.status_code == 422, pinned.text
        assert (pinned.json()["error"]["param"], pinned.json()["error"]["code"]) == ("tools", "infeasible_constraints")


CALL_TEXT = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'  # one word: echoed whole


@pytest.mark.parametrize(("parallel", "calls"), [(None, 3), (True, 3), (False, 1)])
def test_parallel_tool_calls_false_keeps_one_call_under_auto(
    client: TestClient, parallel: bool | None, calls: int
) -> None:
    """The fake echoes the prompt's words after its own two (``coder says:``), so a prompt that is
    one call's text makes an answer of ``max_tokens - 2`` calls under ``auto``; with
    ``parallel_tool_calls: false`` only the first is the answer's, streamed or not (as OpenAI's)."""
    fields = {"tools": [WEATHER], "max_tokens": 5, "parallel_tool_calls": parallel}
    message = post(client, [{"role": "user", "content": CALL_TEXT}], **fields).json()["choices"][0]["message"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("get_weather", '{"city": "Paris"}')
    ] * calls
    with client.stream(
        "POST",
        URL,
        json={"model": "coserve", "messages": [{"role": "user", "content": CALL_TEXT}], "stream": True, **fields},
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    firsts = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", []) if "id" in d]
    assert [d["index"] for d in firsts] == list(range(calls))


@pytest.mark.parametrize(
    "parameters",
    [{"properties": {"city": {"type": "string"}}}, {"type": ["object", "null"]}, {"type": "object"}, {}],
    ids=["no type", "object or null", "object", "empty"],
)
def test_a_forced_call_s_grammar_makes_its_arguments_an_object(parameters: dict[str, Any]) -> None:
    """JSON Schema leaves a value of another type valid when ``type`` is left out (``properties``
    constrain objects only): a forced call's grammar must still make the arguments an object, and
    keep what the schema says of it."""
    from jsonschema import Draft202012Validator

    tools = json.dumps([{"type": "function", "function": {"name": "f", "parameters": parameters}}])
    text = grammar(Sampling(tools=tools, tool_choice="required"))
    assert text is not None
    body = json.loads(text.split("body: %json ", 1)[1])
    validator = Draft202012Validator(body)
    for arguments in ("Paris", None, 3, ["Paris"]):
        assert not validator.is_valid({"name": "f", "arguments": arguments}), arguments
    assert validator.is_valid({"name": "f", "arguments": {"city": "Paris"}})
    assert validator.is_valid({"name": "f", "arguments": {}})
    if "properties" in parameters:
        assert not validator.is_valid({"name": "f", "arguments": {"city": 3}})


def _tool_with_place(name: str, place_field: str) -> dict[str, Any]:
    """A function whose one argument is a nested model, written as ``pydantic_function_tool`` writes
    it: the model in the parameters' own ``$defs``, a ``$ref`` to it."""
    place = {"type": "object", "properties": {place_field: {"type": "string"}}, "required": [place_field]}
    parameters = {
        "$defs": {"Place": place},
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}},
        "required": ["place"],
    }
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def test_a_forced_call_s_grammar_resolves_each_function_s_own_definitions() -> None:
    """Two functions each with a ``Place`` of their own (a city / a street): the forced call's
    schema resolves each function's reference to its own definition."""
    from jsonschema import Draft202012Validator

    tools = json.dumps([_tool_with_place("weather", "city"), _tool_with_place("parcel", "street")])
    text = grammar(Sampling(tools=tools, tool_choice="required"))
    assert text is not None
    validator = Draft202012Validator(json.loads(text.split("body: %json ", 1)[1]))
    assert validator.is_valid({"name": "weather", "arguments": {"place": {"city": "Paris"}}})
    assert validator.is_valid({"name": "parcel", "arguments": {"place": {"street": "Rue Lepic"}}})
    assert not validator.is_valid({"name": "weather", "arguments": {"place": {"street": "Rue Lepic"}}})
    assert not validator.is_valid({"name": "parcel", "arguments": {"place": {"city": 3}}})


@pytest.mark.parametrize("max_tokens", [1, 2, 4])
def test_a_forced_call_cut_before_its_name_ends_leaks_no_markup(client: TestClient, max_tokens: int) -> None:
    """The fake writes a forced call in 8-character pieces; ``<tool_call>\\n{"name": "get_weather"``
    is 34 characters, so 1, 2 or 4 tokens (8 to 32) end the answer inside its head: no call was
    begun, and the block's text is not the answer's content either: it is empty, as an answer cut
    before its first word (finish_reason ``length``)."""
    fields = {"tools": [WEATHER], "tool_choice": "required", "max_tokens": max_tokens}
    choice = post(client, [QUESTION], **fields).json()["choices"][0]
    message = choice["message"]
    assert (message["content"], message.get("tool_calls"), choice["finish_reason"]) == ("", None, "length")
    body = {"model": "coserve", "messages": [QUESTION], "stream": True, **fields}
    with client.stream("POST", URL, json=body) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == ""
    assert events[-1]["choices"][0]["finish_reason"] == "length"
