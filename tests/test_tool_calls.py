"""Tool calls and structured output with fakes (issue 18, items 1, 2 and 4): the parser of a local
expert's ``<tool_call>`` blocks, the grammars a constrained decode follows, the checks at the edge
(400 naming the parameter), the capability routing (422, ``narrowed_by``), and the framing of calls
in answers and streams, through the real app over fake experts.

The fake answers a forced call with ``<tool_call>{"name": <function>, "arguments": {"echo": <the
last prompt word>}}</tool_call>`` in 8-character pieces (coserve/backends/fake.py), so the
expected calls below are written out from the prompt. The real twins: tests/test_tools_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import HELD_OUT
from fastapi.testclient import TestClient
from openai import OpenAI

from coserve.backends.call_stream import AnswerOutlet
from coserve.backends.openai_wire import sampling_body
from coserve.backends.structured import grammar, template_message, wire_message
from coserve.backends.tool_calls import ToolCallParser, joined_calls
from coserve.config import ExpertSpec
from coserve.engine.engine import Engine
from coserve.server.app import create_app
from coserve.types import Chunk, Message, Sampling, ToolCall, Usage

URL = "/v1/chat/completions"
PROMPT = HELD_OUT["chat"]  # routed to "small": "hello friend how are you this morning"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "coserve", "messages": [{"role": "user", "content": PROMPT}], **fields}


def parse(pieces: list[str], names: frozenset[str] = frozenset({"get_weather"})) -> tuple[str, list[ToolCall]]:
    parser = ToolCallParser(names)
    content, calls = "", []
    for piece in pieces:
        text, done = parser.feed(piece)
        content, calls = content + text, calls + done
    text, done = parser.finish()
    return content + text, calls + done


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- the parser -------------------------------------------------------------------------------------


def test_a_tool_call_block_split_anywhere_becomes_a_call() -> None:
    answer = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    for size in (1, 3, 7, len(answer)):
        content, calls = parse(pieces(answer, size))
        assert content == "Let me look."  # the whitespace before a call is dropped
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
        assert calls[0].id.startswith("call_") and len(calls[0].id) == 29


def test_two_blocks_are_two_calls_and_the_whitespace_between_is_dropped() -> None:
    block = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>'
    content, calls = parse(pieces(block % "Paris" + "\n" + block % "Rome" + "\n"))
    assert content == ""
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert calls[0].id != calls[1].id


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_time", "arguments": {}}',  # not one of the request's functions
        '{"name": "get_weather", "arguments": [1]}',  # arguments not an object
        '{"name": "get_weather", "arguments": {"city": ',  # not JSON
    ],
)
def test_a_block_that_is_no_call_of_the_requests_functions_stays_content(body: str) -> None:
    answer = f"<tool_call>{body}</tool_call>"
    assert parse(pieces(answer)) == (answer, [])


def test_arguments_given_as_json_text_are_accepted() -> None:
    answer = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>'
    assert [json.loads(c.arguments) for c in parse(pieces(answer))[1]] == [{"city": "Oslo"}]


def test_an_answer_that_is_only_the_bare_call_object_is_a_call() -> None:
    content, calls = parse(pieces(' {"name": "get_weather", "arguments": {"city": "Paris"}}\n'))
    assert (content, [c.name for c in calls]) == ("", ["get_weather"])
    fenced = '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}\n```'
    content, calls = parse(pieces(fenced))
    assert (content, [(c.name, c.arguments) for c in calls]) == ("", [("get_weather", '{"city": "Paris"}')])
    code = "```python\nprint(1)\n```"
    assert parse(pieces(code)) == (code, [])
    text = '{"name": "get_weather", "arguments": {"city": "Paris"}} and more'
    assert parse(pieces(text)) == (text, [])  # more than the object: content, as written


def test_text_that_only_looks_like_the_start_of_a_block_is_emitted_in_the_end() -> None:
    assert parse(["a <tool", "_c"]) == ("a <tool_c", [])
    assert parse(["1 < 2"]) == ("1 < 2", [])


def test_without_tools_nothing_is_parsed() -> None:
    answer = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    assert parse(pieces(answer), frozenset()) == (answer, [])


# -- grammars and wire ------------------------------------------------------------------------------


def test_the_grammar_follows_response_format_and_forced_tool_choices() -> None:
    assert grammar(Sampling()) is None
    assert grammar(Sampling(response_format='{"type": "text"}')) is None
    assert grammar(Sampling(response_format='{"type": "json_object"}')) == (
        '%llguidance {}\nstart: %json {"type":"object"}'
    )
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    text = json.dumps({"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}})
    assert grammar(Sampling(response_format=text)) == "%llguidance {}\nstart: %json " + json.dumps(
        schema, separators=(",", ":")
    )
    tools = json.dumps([WEATHER, TIME])
    assert grammar(Sampling(tools=tools)) is None  # auto: free text, parsed
    assert grammar(Sampling(tools=tools, tool_choice="none")) is None
    required = grammar(Sampling(tools=tools, tool_choice="required"))
    assert required is not None and required.startswith("%llguidance {}\nstart: call (NL call)*\n")
    assert '"const":"get_weather"' in required and '"const":"get_time"' in required
    single = grammar(Sampling(tools=tools, tool_choice="required", parallel_tool_calls=False))
    assert single is not None and single.startswith("%llguidance {}\nstart: call\n")
    named = grammar(
        Sampling(tools=tools, tool_choice=json.dumps({"type": "function", "function": {"name": "get_time"}}))
    )
    assert named is not None and '"const":"get_time"' in named and "get_weather" not in named


def test_tools_and_response_format_are_forwarded_unchanged() -> None:
    spec = ExpertSpec(name="remote", backend="openai", params_b=1, options={"base_url": "http://x/v1"})
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True},
    }
    choice = {"type": "function", "function": {"name": "get_weather"}}
    sampling = Sampling(
        max_tokens=5,
        tools=json.dumps([WEATHER]),
        tool_choice=json.dumps(choice),
        parallel_tool_calls=False,
        response_format=json.dumps(response_format),
    )
    body = sampling_body(spec, sampling)
    assert (body["tools"], body["tool_choice"], body["parallel_tool_calls"]) == ([WEATHER], choice, False)
    assert body["response_format"] == response_format
    unset = sampling_body(spec, Sampling(tools=json.dumps([WEATHER]), tool_choice="required"))
    assert unset["tool_choice"] == "required" and "parallel_tool_calls" not in unset  # not sent: not set


def test_a_call_in_the_history_reads_as_a_template_and_as_the_wire_expect() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    assistant, tool = Message("assistant", "", (call,)), Message("tool", "21 C", tool_call_id="call_1")
    assert template_message(assistant)["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert wire_message(assistant) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    assert wire_message(tool) == template_message(tool) == {"role": "tool", "content": "21 C", "tool_call_id": "call_1"}


# -- streaming the calls: forced ones as they are written, auto ones once parsed -------------------

TOKENS = ['<tool_call>', '\n', '{"', 'name', '":', ' "', 'get', '_weather', '",', ' "', 'arguments', '":',
          ' {"', 'city', '":', ' "', 'Paris', '"}}', '\n', '</tool_call>']  # fmt: skip


def outlet_run(tokens: list[str], finish: str = "stop", *, forced: bool = True) -> list[Chunk]:
    chunks: list[Chunk] = []
    outlet = AnswerOutlet(lambda chunk: chunks.append(chunk) and False, frozenset({"get_weather", "get_time"}), forced)
    for token in tokens:
        outlet.text(token)
    outlet.end(finish, Usage(1, len(tokens)))
    return chunks


def test_a_forced_call_goes_out_as_its_name_closes_then_a_piece_per_token() -> None:
    chunks = outlet_run(TOKENS)
    deltas = [d for chunk in chunks for d in chunk.tool_calls]
    assert deltas[0].id is not None and deltas[0].id.startswith("call_")
    assert [(d.index, d.name, d.arguments) for d in deltas] == [
        (0, "get_weather", ""),  # when '",' closes the name
        *((0, None, piece) for piece in ['{"', "city", '":', ' "', "Paris", '"}']),
    ]
    assert all(d.id is None for d in deltas[1:])
    assert [c.text for c in chunks] == [""] * len(chunks) and chunks[-1].finish_reason == "tool_calls"
    assert len(chunks) == len(deltas) + 1


def test_a_forced_call_cut_by_max_tokens_ends_with_length_and_the_pieces_written() -> None:
    chunks = outlet_run(TOKENS[:17], "length")  # up to "Paris"
    deltas = [d for chunk in chunks for d in chunk.tool_calls]
    assert "".join(d.arguments for d in deltas) == '{"city": "Paris'
    assert chunks[-1].finish_reason == "length"


@pytest.mark.parametrize("size", range(1, 40))
def test_forced_calls_split_anywhere_join_into_the_arguments_as_written(size: int) -> None:
    first = '{"city": "Pa}ris \\"x\\" {", "n": [1, {"a": 2}], "ok": true}'
    text = (
        f'<tool_call>\n{{"name": "get_weather", "arguments": {first}}}\n</tool_call>\n'
        '<tool_call>\n{"name":"get_time","arguments":{}}\n</tool_call>'
    )
    deltas = [d for chunk in outlet_run(pieces(text, size)) for d in chunk.tool_calls]
    assert [(d.index, d.name) for d in deltas if d.id is not None] == [(0, "get_weather"), (1, "get_time")]
    assert [c.arguments for c in joined_calls(deltas)] == [first, "{}"]
    assert json.loads(first)["city"] == 'Pa}ris "x" {'


def test_a_forced_answer_of_another_shape_is_parsed_whole() -> None:
    text = '<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_weather"}\n</tool_call>'
    assert not any(chunk.tool_calls for chunk in outlet_run(pieces(text[:-1], 4), "length"))  # none before it closed
    chunks = outlet_run(pieces(text, 4))
    deltas = [d for chunk in chunks for d in chunk.tool_calls]
    assert [(d.index, d.name, d.arguments) for d in deltas] == [(0, "get_weather", ""), (0, None, '{"city": "Paris"}')]
    assert chunks[-1].finish_reason == "tool_calls"


def test_an_auto_call_is_parsed_whole_and_streamed_in_one_piece() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    outlet_chunks = outlet_run(pieces(text, 5), forced=False)
    assert len(outlet_chunks) == 3  # the two deltas after the block closed, then the finish
    deltas = [d for chunk in outlet_chunks for d in chunk.tool_calls]
    assert [(d.index, d.name, d.arguments) for d in deltas] == [
        (0, "get_weather", ""),
        (0, None, '{"city": "Paris"}'),
    ]
    assert outlet_chunks[-1].finish_reason == "tool_calls"


# -- through the app --------------------------------------------------------------------------------


def _openai(client: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def test_a_forced_call_is_answered_as_tool_calls(client: TestClient) -> None:
    reply = _openai(client).chat.completions.create(
        model="coserve", messages=[{"role": "user", "content": PROMPT}], tools=[WEATHER], tool_choice="required"
    )
    choice = reply.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    calls = choice.message.tool_calls or []
    assert [(c.type, c.function.name, c.function.arguments) for c in calls] == [
        ("function", "get_weather", '{"echo": "morning"}')
    ]
    assert calls[0].id.startswith("call_")


def test_a_forced_call_streams_its_arguments_in_pieces_as_they_are_written(client: TestClient) -> None:
    """The fake writes ``<tool_call>\\n{"name": "get_time", "arguments": {"echo": "morning"}}\\n</tool_call>``
    in 8-character pieces: the name closes in the 4th (``t_time",``), the arguments begin in the 6th
    (``nts": {"``) and end in the 9th (``}}\\n</too``), so the arguments come in four pieces."""
    named = {"type": "function", "function": {"name": "get_time"}}
    response = client.post(URL, json=chat(stream=True, tools=[WEATHER, TIME], tool_choice=named))
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0]["role"] == "assistant"
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    call_id = calls[0][0]["id"]
    assert call_id.startswith("call_")
    assert calls == [
        [{"index": 0, "id": call_id, "type": "function", "function": {"name": "get_time", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"'}}],
        [{"index": 0, "function": {"arguments": 'echo": "'}}],
        [{"index": 0, "function": {"arguments": 'morning"'}}],
        [{"index": 0, "function": {"arguments": "}"}}],
    ]
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "tool_calls"
    assert not any(d.get("content") for d in deltas)


def test_a_round_trip_history_is_accepted(client: TestClient) -> None:
    history = [
        {"role": "user", "content": PROMPT},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    response = client.post(URL, json={"model": "coserve", "messages": history, "tools": [WEATHER], "max_tokens": 3})
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message["content"].startswith("small says:") and "tool_calls" not in message


BAD = [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "foo"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tool_choice": "always", "tools": [WEATHER]}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param"), BAD, ids=[p for _, p in BAD])
def test_a_wrong_tool_or_format_parameter_is_a_400_naming_it(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    response = client.post(URL, json=chat(**fields))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "sunny"}, "messages[1].tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": [{"id": "c", "type": "function",
          "function": {"name": "f", "arguments": "{}"}}]}, "messages[1].tool_calls"),
        ({"role": "assistant", "content": None}, "messages[1].content"),
    ],
)  # fmt: skip
def test_a_wrong_tool_message_is_a_400_naming_its_field(
    client: TestClient, message: dict[str, Any], param: str
) -> None:
    response = client.post(URL, json={"model": "coserve", "messages": [{"role": "user", "content": PROMPT}, message]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_tools_request_is_routed_away_from_an_expert_without_the_capability(
    make_engine: Callable[..., Engine],
) -> None:
    """'small' (the chat prompt's first choice) declares no tools: the call goes elsewhere and the
    ``coserve`` field says why; without tools the same prompt stays on 'small'."""
    engine = make_engine(fields={"small": {"capabilities": ["logprobs"]}})
    with TestClient(create_app(engine)) as client:
        plain = client.post(URL, json=chat(max_tokens=2)).json()["coserve"]
        assert (plain["expert"], plain["reason"], "narrowed_by" in plain) == ("small", "routed", False)
        routed = client.post(URL, json=chat(tools=[WEATHER], tool_choice="required")).json()
        assert routed["coserve"]["expert"] != "small"
        assert (routed["coserve"]["reason"], routed["coserve"]["narrowed_by"]) == ("constrained", ["tools"])
        assert routed["choices"][0]["finish_reason"] == "tool_calls"
        pinned = client.post(URL, json={**chat(tools=[WEATHER]), "model": "small"})
        assert pinned.status_code == 422 and pinned.json()["error"]["param"] == "tools"
        assert (
            client.post(URL, json=chat(tools=[WEATHER], tool_choice="none", max_tokens=2)).json()["coserve"]["expert"]
            == "small"
        )


def test_a_capability_no_expert_has_is_a_422_naming_its_parameter(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(all_fields={"capabilities": ["logprobs"]})
    with TestClient(create_app(engine)) as client:
        for fields, param in (
            ({"tools": [WEATHER]}, "tools"),
            ({"response_format": {"type": "json_object"}}, "response_format"),
        ):
            response = client.post(URL, json=chat(**fields))
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert (error["param"], error["code"]) == (param, "infeasible_constraints")
        assert client.post(URL, json=chat(max_tokens=2, logprobs=True)).status_code == 200


@pytest.mark.parametrize("declared", [False, True])
def test_an_image_part_is_a_400_naming_its_type_even_where_an_expert_declares_vision(
    make_engine: Callable[..., Engine], declared: bool
) -> None:
    """coserve sends its experts text only: an image part is refused at the edge, a ``vision``
    expert in the library or not (docs/api.md)."""
    engine = make_engine(all_fields={"capabilities": ["vision"]} if declared else {})
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": PROMPT}, image]},
    ]
    with TestClient(create_app(engine)) as client:
        response = client.post(URL, json={"model": "coserve", "messages": messages})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages[1].content[1].type", "unsupported_parameter")
    assert error["message"].startswith("messages[1].content[1].type: 'image_url' parts are not served")


def test_an_unknown_declared_capability_stops_the_library(make_engine: Callable[..., Engine]) -> None:
    from coserve.errors import ConfigError

    with pytest.raises(ConfigError, match=r"experts\[0\]\.capabilities: unknown 'telepathy'"):
        make_engine(fields={"small": {"capabilities": ["telepathy"]}})


def test_a_runtime_without_tools_or_grammars_refuses_them_by_name() -> None:
    """What ``transformers`` and ``vllm`` do (coserve.backends.chores.refuse_sampling)."""
    from coserve.backends.chores import refuse_sampling
    from coserve.errors import InvalidRequest

    spec = ExpertSpec(name="hf", backend="transformers", params_b=1)
    tools = json.dumps([WEATHER])
    for sampling, param in (
        (Sampling(tools=tools), "tools"),
        (Sampling(response_format='{"type": "json_object"}'), "response_format"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            refuse_sampling(spec, sampling, logprobs=True, penalties=True)
        assert (refused.value.param, refused.value.code) == (param, "unsupported_parameter")
        refuse_sampling(spec, sampling, logprobs=True, penalties=True, structured=True)
    refuse_sampling(spec, Sampling(tools=tools, tool_choice="none"), logprobs=True, penalties=True)


def test_tools_are_measured_from_the_chat_template_at_the_library_check() -> None:
    """``general`` (SmolLM2's template: no tools) loses ``tools``; a file not there yet (the split
    experts are assembled into the cache, here a fresh one) keeps its backend's."""
    from coserve.backends.registry import capabilities, check_library
    from coserve.config import load_library

    library = check_library(load_library())
    assert "tools" not in capabilities(library.expert("general"))
    assert {"json_schema", "logprobs"} <= capabilities(library.expert("general"))
    assert library.expert("general").capabilities is not None
    assert library.expert("coder").capabilities is None and "tools" in capabilities(library.expert("coder"))
