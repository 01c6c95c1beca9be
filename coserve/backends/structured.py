"""Structured output and tool calls for local experts: what a request's ``response_format``,
``tools`` and ``tool_choice`` (``Sampling``, the client's JSON text) ask of the decode.

* ``grammar(sampling)``: the grammar a constrained decode follows, or None for free text. JSON
  Schema goes through llama.cpp's own converter (``xllamacpp.json_schema_to_grammar``), which in
  the pinned build writes llguidance's grammar format (``%llguidance``, a ``%json`` rule): the
  answer of ``json_object`` is a JSON object, that of ``json_schema`` (strict or not) an instance
  of its schema. A ``required`` or named ``tool_choice`` forces one (or, with
  ``parallel_tool_calls``, one or more) ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``
  blocks whose arguments are an instance of the declared ``parameters`` schema. ``auto`` is not
  constrained: what the model writes is parsed (coserve.backends.tool_calls).
* ``template_tools`` / ``template_message``: the tools and turns as Hugging Face chat templates
  read them (arguments as an object), ``wire_message``: as OpenAI's API carries them (JSON text).

The ``<tool_call>`` convention is the one of Qwen2.5's and Hermes' templates; an expert whose
template renders tools with it has the ``tools`` capability (coserve.backends.registry).
It knows nothing of runtimes or samplers: it writes text.
"""

from __future__ import annotations

import json
from typing import Any

from coserve.types import Message, Sampling

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "answer_schema",
    "forced_tool_names",
    "grammar",
    "renders_tool_calls",
    "template_message",
    "template_tools",
    "tool_names",
    "wire_message",
]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_LLGUIDANCE = "%llguidance {}\nstart: "  # how the pinned converter begins every grammar it writes


def renders_tool_calls(template: str) -> bool:
    """Whether a chat template renders the request's ``tools`` and asks for calls in the
    ``<tool_call>`` convention this module constrains and coserve.backends.tool_calls parses."""
    return "tools" in template and CALL_OPEN in template


def answer_schema(sampling: Sampling) -> dict[str, Any] | None:
    """The JSON Schema the answer must follow (``json_object``: any object), or None for text."""
    if sampling.response_format is None:
        return None
    response_format = json.loads(sampling.response_format)
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    if response_format.get("type") == "json_schema":
        schema: dict[str, Any] = response_format["json_schema"].get("schema") or {"type": "object"}
        return schema
    return None


def _tools(sampling: Sampling) -> list[dict[str, Any]]:
    return json.loads(sampling.tools) if sampling.tools else []


def tool_names(sampling: Sampling) -> frozenset[str]:
    """The names of the functions the request declares (empty when ``tool_choice`` is ``none``)."""
    if sampling.tool_choice == "none":
        return frozenset()
    return frozenset(tool["function"]["name"] for tool in _tools(sampling))


def forced_tool_names(sampling: Sampling) -> list[str]:
    """The functions the answer must call one of (``required``: any; a named choice: that one),
    or an empty list when the model may answer in text."""
    if not sampling.tools or sampling.tool_choice in (None, "auto", "none"):
        return []
    if sampling.tool_choice == "required":
        return [tool["function"]["name"] for tool in _tools(sampling)]
    return [json.loads(sampling.tool_choice)["function"]["name"]]


def _json_rule(schema: dict[str, Any]) -> str:
    """The body of the converter's start rule for ``schema`` (a ``%json`` rule)."""
    from coserve.backends.llama_runtime import xllamacpp

    text = str(xllamacpp().json_schema_to_grammar(json.dumps(schema)))
    if not text.startswith(_LLGUIDANCE):  # another xllamacpp build (GBNF output): refuse loudly
        raise RuntimeError("xllamacpp.json_schema_to_grammar no longer writes llguidance grammars")
    return text[len(_LLGUIDANCE) :]


def _rooted(parameters: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A function's parameters made to sit inside a call's schema, where a reference is read from
    the call's root: its own definitions (``$defs``, ``definitions``: a nested model of the openai
    client's ``pydantic_function_tool``) moved out under names prefixed by the function's, to go at
    the grammar's root, and its references to them pointed there; a reference to the parameters'
    own root (``#``, a recursive tree) or below it (``#/properties/a``) points at a copy of the
    parameters kept among those definitions (``<name>.parameters``), added only when one refers to it."""
    own = f"{name}.parameters"
    refers_to_root: list[bool] = []

    def moved(ref: str) -> str:
        for root in ("#/$defs/", "#/definitions/"):
            if ref.startswith(root):
                return f"#/$defs/{name}__{ref[len(root) :]}"
        if ref == "#" or ref.startswith("#/"):
            refers_to_root.append(True)
            return f"#/$defs/{own}{ref[1:]}"
        return ref  # an anchor or another document's: llguidance decides (a 400 if it cannot compile)

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: moved(v) if k == "$ref" and isinstance(v, str) else rewrite(v) for k, v in value.items()}
        return [rewrite(v) for v in value] if isinstance(value, list) else value

    schema = rewrite(parameters)
    sections = [schema.pop(key, None) or {} for key in ("$defs", "definitions")]
    definitions = {f"{name}__{key}": definition for section in sections for key, definition in section.items()}
    if refers_to_root:
        definitions[own] = schema
    return schema, definitions


def _call_schema(tool: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of one call of ``tool``, and the definitions it needs at the root."""
    function = tool["function"]
    parameters, definitions = _rooted(function.get("parameters") or {}, function["name"])
    schema = {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            # an object whatever else the schema says (without ``type`` it would let any value be)
            "arguments": {**parameters, "type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    return schema, definitions


def grammar(sampling: Sampling) -> str | None:
    """The llguidance grammar the decode must follow, or None (free text)."""
    forced = forced_tool_names(sampling)
    if forced:
        calls = [_call_schema(tool) for tool in _tools(sampling) if tool["function"]["name"] in forced]
        variants = [schema for schema, _ in calls]
        call_schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
        definitions = {key: value for _, found in calls for key, value in found.items()}
        call_schema = {**call_schema, "$defs": definitions} if definitions else call_schema
        several = sampling.parallel_tool_calls is not False and sampling.tool_choice == "required"
        return (
            f"{_LLGUIDANCE}call{' (NL call)*' if several else ''}\n"
            f'call: "{CALL_OPEN}" NL body NL "{CALL_CLOSE}"\n'
            'NL: "\\n"\n'
            f"body: {_json_rule(call_schema)}"
        )
    schema = answer_schema(sampling)
    return None if schema is None else _LLGUIDANCE + _json_rule(schema)


def template_tools(sampling: Sampling) -> list[dict[str, Any]] | None:
    """The tools as a chat template's ``tools`` (None without tools or with ``tool_choice: none``)."""
    if sampling.tool_choice == "none":
        return None
    return _tools(sampling) or None


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def template_message(message: Message) -> dict[str, Any]:
    """One turn as a Hugging Face chat template reads it (a call's arguments as an object)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def wire_message(message: Message) -> dict[str, Any]:
    """One turn as OpenAI's API carries it (a call's arguments as JSON text)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out
