"""An assistant turn's calls and the ``tool`` turns answering them, held to OpenAI's rules (session 13's
agent walk left these accepted): every call answered before the next non-tool turn, each call id
once in its turn and answered once, and ``parallel_tool_calls`` only with ``tools``. The expected
statuses and params are written out from OpenAI's rules, not read from the code; the openai client's
own agent loop (its message objects sent back as they are) is served end to end.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from tool_messages import QUESTION, WEATHER, calling, post, result

ANSWER = {"role": "assistant", "content": "It is sunny."}


@pytest.mark.parametrize(
    ("messages", "param", "unanswered"),
    [
        ([QUESTION, calling("c1"), QUESTION], "messages[1].tool_calls", "'c1'"),  # a user turn next
        ([QUESTION, calling("c1", "c2"), result("c2"), QUESTION], "messages[1].tool_calls", "'c1'"),
        ([QUESTION, calling("c1"), ANSWER, QUESTION], "messages[1].tool_calls", "'c1'"),  # an assistant turn next
        ([QUESTION, calling("c1"), {"role": "system", "content": "x"}, result("c1")], "messages[1].tool_calls", "'c1'"),
        ([QUESTION, calling("c1", "c2")], "messages[1].tool_calls", "'c1', 'c2'"),  # the conversation ends
        ([QUESTION, calling("c1"), result("c1"), QUESTION, calling("c9"), QUESTION], "messages[4].tool_calls", "'c9'"),
    ],
)  # fmt: skip
def test_calls_left_unanswered_before_the_next_turn_are_a_400_naming_the_calling_message(
    client: TestClient, messages: list[dict[str, Any]], param: str, unanswered: str
) -> None:
    response = post(client, messages, tools=[WEATHER])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_request", "invalid_request_error")
    assert f"not answered: {unanswered}" in error["message"]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([QUESTION, calling("c1", "c1"), result("c1")], "messages[1].tool_calls[1].id"),  # one id, two calls
        ([QUESTION, calling("a", "b", "a"), result("a"), result("b")], "messages[1].tool_calls[2].id"),
        ([QUESTION, calling("c1", "c2"), result("c1"), result("c1"), result("c2")], "messages[3].tool_call_id"),
    ],
)  # fmt: skip
def test_one_call_id_twice_in_a_turn_or_answered_twice_is_a_400_naming_it(
    client: TestClient, messages: list[dict[str, Any]], param: str
) -> None:
    response = post(client, messages, tools=[WEATHER])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_request")


@pytest.mark.parametrize(
    "messages",
    [
        [QUESTION, calling("c1", "c2"), result("c2"), result("c1"), QUESTION],  # out of order, then a user turn
        [QUESTION, calling("c1"), result("c1"), ANSWER, QUESTION, calling("c1"), result("c1")],  # an id reused later
        [QUESTION, calling("c1"), result("c1"), calling("c2"), result("c2")],  # two rounds without a user turn between
        [QUESTION, calling("c1"), result("c1")],  # the conversation ends on the result
    ],
    ids=["out of order", "id reused", "two rounds", "ends on a result"],
)  # fmt: skip
def test_well_formed_agent_conversations_are_served(client: TestClient, messages: list[dict[str, Any]]) -> None:
    assert post(client, messages, tools=[WEATHER]).status_code == 200
    assert post(client, messages).status_code == 200  # an agent's last turn, sent without tools


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("tools", [None, []], ids=["no tools", "empty tools"])
def test_parallel_tool_calls_without_tools_is_a_400_naming_it(
    client: TestClient, value: bool, tools: list[Any] | None
) -> None:
    fields = {"parallel_tool_calls": value} | ({} if tools is None else {"tools": tools})
    response = post(client, [QUESTION], **fields)
    assert response.status_code == 400, response.text
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (
        "parallel_tool_calls",
        "invalid_request",
    )
    assert post(client, [QUESTION], parallel_tool_calls=None).status_code == 200  # null: not given
    assert post(client, [QUESTION], parallel_tool_calls=value, tools=[WEATHER]).status_code == 200


def test_the_openai_client_s_agent_loop_is_served(client: TestClient) -> None:
    """The loop the openai client's docs show: the assistant's message object sent back as the client
    gives it, one ``tool`` message per call, the final answer, then the user's next question."""
    from openai import OpenAI

    openai = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    messages: list[Any] = [QUESTION]
    reply = openai.chat.completions.create(
        model="coserve",
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=64,  # type: ignore[list-item]
    )
    calls = reply.choices[0].message.tool_calls or []
    assert len(calls) == 1 and reply.choices[0].finish_reason == "tool_calls"
    messages += [reply.choices[0].message, *({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls)]
    final = openai.chat.completions.create(model="coserve", messages=messages, tools=[WEATHER], max_tokens=4)  # type: ignore[list-item]
    assert final.choices[0].message.content
    messages += [final.choices[0].message, {"role": "user", "content": "And tomorrow?"}]
    again = openai.chat.completions.create(model="coserve", messages=messages, tools=[WEATHER], max_tokens=4)  # type: ignore[list-item]
    assert again.choices[0].finish_reason in ("stop", "length")
