"""The tool-calling and structured-output parameters of a chat body (``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, a message's ``tool_calls``): their pydantic models,
the checks OpenAI makes on them (400 naming the parameter), and their conversion to the JSON text
``coserve.types.Sampling`` carries to the backends.

A JSON Schema (a function's ``parameters``, ``response_format.json_schema.schema``) is checked
against its meta-schema (``jsonschema``): an invalid one is a 400 here, before routing. A schema
valid as JSON Schema that a local expert's grammar compiler still refuses is a 400 from the
backend (coserve.backends.llamacpp_split).

This module knows nothing about routing, engines or how responses are written.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coserve.errors import InvalidRequest
from coserve.types import Message, ToolCall

__all__ = [
    "FunctionCallParam",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "ResponseFormat",
    "ToolCallParam",
    "ToolParam",
    "check_schema",
    "check_tool_turns",
    "sampling_fields",
    "tool_calls_of",
]

_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


class FunctionParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments (an object)
    strict: bool | None = None


class ToolParam(BaseModel):
    """One entry of ``tools``: a function the model may call."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionParam


class _ChosenFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: call that function."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: _ChosenFunction


class FunctionCallParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str  # JSON text, as OpenAI's API carries it


class ToolCallParam(BaseModel):
    """One call in an assistant message's ``tool_calls`` (a client echoing an earlier answer)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"]
    function: FunctionCallParam


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` or ``json_schema`` (with ``json_schema``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def check_schema(schema: dict[str, Any], param: str) -> None:
    """InvalidRequest (400, ``param``) unless ``schema`` is a valid JSON Schema."""
    from jsonschema import SchemaError, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"{param}: not a valid JSON Schema: {exc.message}", param=param) from None


def _check_arguments_schema(schema: dict[str, Any], param: str) -> None:
    """InvalidRequest (400) unless ``schema`` is a JSON Schema that lets the arguments be an object
    (a call's arguments are one, as OpenAI requires of ``parameters``); no ``type`` leaves it open."""
    check_schema(schema, param)
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if kind is not None and "object" not in kinds:
        raise InvalidRequest(f"{param}: must describe an object (type 'object'), not {kind!r}", param=param)


def check_tool_turns(messages: tuple[Message, ...]) -> None:
    """InvalidRequest (400) for tool turns OpenAI's API refuses: a ``tool`` turn that answers no call
    of the assistant turn before it (only tool turns between) or answers one already answered
    (``messages[i].tool_call_id``); an assistant turn calling two functions under one id
    (``messages[i].tool_calls[j].id``) or whose calls are not all answered before the next turn
    that is not a tool's, or the end (``messages[i].tool_calls``). An id may come back in a later
    assistant turn: its answers follow that turn, so they are not ambiguous."""
    calls: set[str] = set()
    answered: set[str] = set()
    caller = 0  # the assistant turn whose calls are being answered
    for i, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in calls:
                raise InvalidRequest(
                    f"messages[{i}].tool_call_id: {message.tool_call_id!r} answers no call of the assistant "
                    "message before it (a tool message follows the assistant message whose call it answers)",
                    param=f"messages[{i}].tool_call_id",
                )
            if message.tool_call_id in answered:
                raise InvalidRequest(
                    f"messages[{i}].tool_call_id: the call {message.tool_call_id!r} of messages[{caller}] is "
                    "answered twice (one tool message per call)",
                    param=f"messages[{i}].tool_call_id",
                )
            answered.add(message.tool_call_id)
            continue
        _check_answered(calls, answered, caller, f"before messages[{i}]")
        ids = [call.id for call in message.tool_calls]
        for j, call_id in enumerate(ids):
            if call_id in ids[:j]:
                raise InvalidRequest(
                    f"messages[{i}].tool_calls[{j}].id: {call_id!r} is the id of an earlier call of this "
                    "message (each call needs its own id for its result to answer it)",
                    param=f"messages[{i}].tool_calls[{j}].id",
                )
        calls, answered, caller = set(ids), set(), i
    _check_answered(calls, answered, caller, "at the end of the messages")


def _check_answered(calls: set[str], answered: set[str], caller: int, where: str) -> None:
    """InvalidRequest (400, ``messages[caller].tool_calls``) unless every call has been answered."""
    if calls - answered:
        unanswered = ", ".join(repr(call_id) for call_id in sorted(calls - answered))
        raise InvalidRequest(
            f"messages[{caller}].tool_calls: an assistant message with tool_calls must be followed by a tool "
            f"message answering each call; not answered: {unanswered} ({where})",
            param=f"messages[{caller}].tool_calls",
        )


def sampling_fields(
    tools: list[ToolParam] | None,
    tool_choice: str | NamedToolChoice | None,
    parallel_tool_calls: bool | None,
    response_format: ResponseFormat | None,
) -> dict[str, Any]:
    """The checked parameters as ``Sampling`` fields (JSON text); 400 naming the first one wrong."""
    names = [tool.function.name for tool in tools or ()]
    if parallel_tool_calls is not None and not names:  # as OpenAI: it asks how to call tools there are not
        raise InvalidRequest("parallel_tool_calls: only allowed when tools are given", param="parallel_tool_calls")
    if tool_choice not in (None, "none") and not names:  # as vLLM: "none" without tools asks for nothing
        raise InvalidRequest("tool_choice: only allowed when tools are given", param="tool_choice")
    if len(set(names)) < len(names):
        raise InvalidRequest("tools: two functions have the same name", param="tools")
    for i, tool in enumerate(tools or ()):
        if tool.function.parameters is not None:
            _check_arguments_schema(tool.function.parameters, f"tools[{i}].function.parameters")
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice: no function named {tool_choice.function.name!r} in tools", param="tool_choice"
        )
    fields: dict[str, Any] = {}
    if names:
        fields["parallel_tool_calls"] = parallel_tool_calls
        fields["tools"] = json.dumps([tool.model_dump(exclude_none=True) for tool in tools or ()])
    if tool_choice is not None and names:
        fields["tool_choice"] = tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump_json()
    if response_format is not None and response_format.type != "text":
        if response_format.type == "json_schema":
            if response_format.json_schema is None:
                raise InvalidRequest("response_format: json_schema is missing", param="response_format")
            if response_format.json_schema.schema_ is not None:
                check_schema(response_format.json_schema.schema_, "response_format")
        elif response_format.json_schema is not None:
            raise InvalidRequest("response_format: json_schema goes with type json_schema", param="response_format")
        fields["response_format"] = response_format.model_dump_json(by_alias=True, exclude_none=True)
    return fields


def tool_calls_of(calls: list[ToolCallParam] | None) -> tuple[ToolCall, ...]:
    """An assistant message's calls as the internal ToolCall."""
    return tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in calls or ())
