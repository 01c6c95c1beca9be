"""Tool calls and structured output with the real experts (issue 18, items 1, 2, 4 and 6): the
official openai client against a live ``coserve serve`` on the default library.

``coder`` (Qwen2.5-Coder-0.5B, whose chat template renders tools in the ``<tool_call>``
convention) makes the calls; ``general`` (SmolLM2-135M, whose template knows no tools) answers the
JSON-schema requests and is routed around for tools. Every answer is checked against the schema
it was constrained by, with ``jsonschema`` (independent of the grammar that produced it).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp"),
]

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris right now?"}]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def openai_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from live import LiveServer
    from openai import OpenAI

    with LiveServer(Path(tmp_path_factory.mktemp("tools")), bundled=True, start_timeout=240.0) as live:
        yield OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=240)


def _valid(instance: Any, schema: dict[str, Any]) -> None:
    from jsonschema import validate

    validate(instance, schema)


def test_a_round_trip_call_tool_result_final_answer(openai_client: Any) -> None:
    first = openai_client.chat.completions.create(
        model="coder", messages=QUESTION, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=60
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
    arguments = json.loads(calls[0].function.arguments)
    _valid(arguments, WEATHER_PARAMETERS)
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump() for call in calls]},
        *(
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}
            for call in calls
        ),
    ]
    final = openai_client.chat.completions.create(
        model="coder", messages=history, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40
    )
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert "21" in (answer.message.content or "")  # the tool's result reached the model


def test_a_named_call_streams_as_openai_streams_it(openai_client: Any) -> None:
    stream = openai_client.chat.completions.create(
        model="coder",
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    deltas, finish = [], None
    for chunk in stream:
        if chunk.choices:
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    first, rest = deltas[0], deltas[1:]
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
    assert first.id.startswith("call_") and rest and all(d.id is None and d.function.name is None for d in rest)
    assert first.function.arguments == "" and all(d.index == 0 for d in rest)
    pieces = [d.function.arguments for d in rest]
    assert len(pieces) > 1 and all(pieces), pieces  # streamed as the tokens came, not in one piece
    _valid(json.loads("".join(pieces)), WEATHER_PARAMETERS)


def test_auto_parses_the_call_the_model_writes_on_its_own(openai_client: Any) -> None:
    """``auto`` is not constrained: greedy, ``coder`` writes the call object without the tags, and
    it comes back as a call all the same (coserve/backends/tool_calls.py)."""
    reply = openai_client.chat.completions.create(
        model="coder", messages=QUESTION, tools=[WEATHER], temperature=0, max_tokens=40
    )
    choice = reply.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments)["city"] == "Paris"


def test_a_pydantic_tool_with_nested_models_is_called_and_parsed(openai_client: Any) -> None:
    """The openai client's ``pydantic_function_tool`` writes a nested model as a ``$ref`` into the
    parameters' own ``$defs``: the forced call's grammar must still compile and follow it."""
    import openai
    from pydantic import BaseModel

    class Place(BaseModel):
        city: str
        country: str

    class GetWeather(BaseModel):
        place: Place

    reply = openai_client.chat.completions.parse(
        model="coder",
        messages=QUESTION,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        temperature=0,
        max_tokens=60,
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments.place.city == "Paris"


def test_fifty_json_schema_answers_all_parse_and_validate(openai_client: Any) -> None:
    people = ["Ada", "Alan", "Grace", "Linus", "Edsger", "Barbara", "Donald", "Ken", "Dennis", "Margaret"]

    def ask(i: int) -> tuple[str | None, str | None]:
        reply = openai_client.chat.completions.create(
            model="general",
            messages=[{"role": "user", "content": f"Describe {people[i % 10]}, a person aged {20 + i}, as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": ANSWER_SCHEMA, "strict": True},
            },
            temperature=0.7,
            seed=i,
            max_tokens=48,
        )
        return reply.choices[0].message.content, reply.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # the expert's four slots
        answers = list(pool.map(ask, range(50)))
    assert [finish for _, finish in answers] == ["stop"] * 50
    for content, _ in answers:
        _valid(json.loads(content or ""), ANSWER_SCHEMA)
    reply = openai_client.chat.completions.create(
        model="general",
        messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
        response_format={"type": "json_object"},
        max_tokens=48,
        temperature=0,
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_a_tools_request_is_routed_away_from_general(openai_client: Any) -> None:
    messages: Any = [{"role": "user", "content": "Hi! How are you doing today?"}]
    limits = {"coserve": {"max_params_b": 1.0}}  # general or coder: keeps the test off the 1.5B expert
    plain = openai_client.chat.completions.create(model="coserve", messages=messages, max_tokens=4, extra_body=limits)
    assert plain.model == "general"
    routed = openai_client.chat.completions.create(
        model="coserve", messages=messages, tools=[WEATHER], max_tokens=4, extra_body=limits
    )
    assert routed.model == "coder"
    coserve = routed.model_extra["coserve"]
    assert (coserve["reason"], coserve["narrowed_by"]) == ("constrained", ["tools"])
    # A conversation carrying calls asks for none itself, yet general's template would drop them.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [*messages, {"role": "assistant", "content": None, "tool_calls": [call]}]
    history += [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}, *messages]
    after = openai_client.chat.completions.create(model="coserve", messages=history, max_tokens=4, extra_body=limits)
    assert (after.model, after.model_extra["coserve"]["narrowed_by"]) == ("coder", ["tools"])
    models = {m.id: m.model_extra["coserve"] for m in openai_client.models.list().data if m.id != "coserve"}
    assert "tools" not in models["general"]["capabilities"] and "json_schema" in models["general"]["capabilities"]
    assert {"tools", "json_schema", "logprobs"} <= set(models["coder"]["capabilities"])


def test_what_cannot_be_served_is_refused_with_its_parameter(openai_client: Any) -> None:
    from openai import BadRequestError, UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError) as pinned:
        openai_client.chat.completions.create(model="general", messages=QUESTION, tools=[WEATHER], max_tokens=4)
    assert pinned.value.param == "tools"
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": 3}}}
    with pytest.raises(BadRequestError) as invalid:
        openai_client.chat.completions.create(model="general", messages=QUESTION, response_format=bad_schema)
    assert invalid.value.param == "response_format"
    unresolved = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(BadRequestError) as uncompiled:  # valid JSON Schema, but no grammar: the expert says so
        openai_client.chat.completions.create(model="general", messages=QUESTION, response_format=unresolved)
    assert uncompiled.value.param == "response_format"


def test_llamacpp_passes_response_format_to_its_server_and_refuses_tools() -> None:
    """The ``llamacpp`` backend (llama.cpp's server in xllamacpp): the server's own grammar keeps
    ``general`` to the schema; tools are refused before anything is generated."""
    from general_expert import loaded_general, stream_all

    from coserve.backends.llamacpp import LlamaCppBackend
    from coserve.errors import InvalidRequest
    from coserve.types import Sampling

    backend = LlamaCppBackend()
    with loaded_general("llamacpp", backend) as handle:
        response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": ANSWER_SCHEMA}}
        sampling = Sampling(max_tokens=48, temperature=0.0, response_format=json.dumps(response_format))
        prompt = "Describe Ada, a person aged 36, as JSON."
        chunks = stream_all(backend, handle, prompt, sampling)
        assert chunks[-1].finish_reason == "stop"
        _valid(json.loads("".join(chunk.text for chunk in chunks)), ANSWER_SCHEMA)
        with pytest.raises(InvalidRequest, match="tools: ") as refused:
            stream_all(backend, handle, prompt, Sampling(tools=json.dumps([WEATHER])))  # refused before generating
        assert refused.value.param == "tools"


def test_a_model_at_a_freed_models_address_gets_its_own_grammar_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp caches llguidance's tokenizer by the vocabulary's address alone: when the slot was
    built for another model at this address (simulated: another serial), it is rebuilt first, and
    the sampler still constrains (a JSON object's first token cannot be a letter)."""
    from coserve.backends import llama_capi, llama_grammar
    from coserve.backends.llama_memory import gguf_path
    from coserve.backends.llama_model import LoadedModel
    from coserve.backends.structured import grammar
    from coserve.config import load_library
    from coserve.types import Sampling

    library = load_library()
    spec = library.expert("general")
    model = LoadedModel(spec, gguf_path(spec, library.path.parent if library.path else None))
    rebuilt: list[int] = []
    real_rebuild = llama_grammar._rebuild_slot
    monkeypatch.setattr(llama_grammar, "_rebuild_slot", lambda m: rebuilt.append(m.serial) or real_rebuild(m))
    text = grammar(Sampling(response_format='{"type": "json_object"}'))
    assert text is not None
    try:
        llama_capi.lib().llama_sampler_free(llama_grammar.grammar_sampler(model, text))
        assert rebuilt == [] and llama_grammar._built_for == (model.vocab, model.serial)
        monkeypatch.setattr(llama_grammar, "_built_for", (model.vocab, -1))  # a freed model's slot
        sampler = llama_grammar.grammar_sampler(model, text)
        assert rebuilt == [model.serial] and llama_grammar._built_for == (model.vocab, model.serial)
        letter = model.tokenize("a", add_special=False)[0]
        brace = model.tokenize("{", add_special=False)[0]
        candidates = (llama_capi.TokenData * 2)(
            llama_capi.TokenData(letter, 0.0, 0.0), llama_capi.TokenData(brace, 0.0, 0.0)
        )
        llama_capi.lib().llama_sampler_apply(sampler, llama_capi.TokenDataArray(candidates, 2, -1, False))
        assert candidates[0].logit == float("-inf") and candidates[1].logit == 0.0
        llama_capi.lib().llama_sampler_free(sampler)
    finally:
        model.release(drop=False)
