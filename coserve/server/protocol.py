"""Pydantic models of the OpenAI chat API subset coserve speaks, plus its extensions, and the parsing of bodies.

Validation here is the edge: a body that passes becomes a frozen ``coserve.types.Request``.
Types are strict, as in OpenAI's API: no string is taken for a bool or a number, no bool for a
number, no fractional number for an integer (an integer is a valid number). Type errors and
malformed bodies are 400 (``invalid_request_error``, ``param`` names the field); values out of
range are 422. Every parameter of OpenAI's chat-completions body is either honoured or refused with
a 400 naming it (``code`` ``unsupported_parameter``), never silently ignored: the deprecated
``functions``/``function_call``, audio, ``n`` > 1, ``logit_bias`` and the like (``REFUSED``).
Tools and ``response_format`` are checked in coserve.server.tool_params. A parameter OpenAI does
not define is refused too (``unknown_parameter``), unless the library's
``server.unknown_parameters`` is ``ignore``. docs/api.md has the table.

This module knows nothing about routing, engines or how responses are written.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coserve.errors import InvalidRequest, UnprocessableRequest
from coserve.server.messages import ChatMessage
from coserve.server.tool_params import (
    NamedToolChoice,
    ResponseFormat,
    ToolParam,
    check_tool_turns,
    sampling_fields,
    tool_calls_of,
)
from coserve.types import Constraints, Message, Request, Sampling

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CoserveOptions",
    "FeedbackRequest",
    "json_body",
    "parse_chat",
    "parse_feedback",
    "refuse_unsupported",
]

_Model = TypeVar("_Model", bound=BaseModel)

MAX_TOKENS_CAP = 8192  # no request may ask for more completion tokens than this


class CoserveOptions(BaseModel):
    """Constraint flags, sent by the openai client with ``extra_body={"coserve": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    max_params_b: float | None = Field(None, gt=0)
    max_price: float | None = Field(None, ge=0)
    min_context: int | None = Field(None, ge=1)
    require_tags: list[str] = []
    exclude_experts: list[str] = []
    budget: float | None = Field(None, gt=0)  # a trained router's budget for this request


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


# OpenAI chat-completions parameters coserve does not serve, and the value of each that asks for
# nothing (a client may send it; ``None`` is JSON null, always accepted). Anything else: a 400.
REFUSED: dict[str, tuple[Any, ...]] = {
    "functions": (None,),  # deprecated by OpenAI for ``tools``, which coserve serves
    "function_call": (None, "none"),
    "logit_bias": (None, {}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "store": (None, False),
    "metadata": (None,),  # only meaningful with store
    "service_tier": (None, "auto", "default"),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
}
UnknownParameters = Literal["refuse", "ignore"]
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")  # what a served message may hold


def refuse_unsupported(data: dict[str, Any], unknown: UnknownParameters = "refuse") -> None:
    """InvalidRequest (400) naming the first parameter coserve refuses: a REFUSED one set to a
    value that asks for something, or (unless ``unknown`` is ``ignore``) one OpenAI does not define;
    or a message field other than role, content, name, tool_calls and tool_call_id that is not null
    or empty (``function_call``, ``audio``, ``refusal``...)."""
    known = set(ChatCompletionRequest.model_fields)
    for name, value in data.items():
        if name in REFUSED:
            if not any(value == neutral and type(value) is type(neutral) for neutral in REFUSED[name]):
                raise InvalidRequest(
                    f"{name}: coserve does not support this parameter (docs/api.md lists what it serves)",
                    param=name,
                    code="unsupported_parameter",
                )
        elif name not in known and unknown == "refuse":
            raise InvalidRequest(
                f"{name}: unknown parameter (server.unknown_parameters: ignore accepts extras)",
                param=name,
                code="unknown_parameter",
            )
    messages = data.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        _refuse_non_text_parts(i, message.get("content") if isinstance(message, dict) else None)
        for name, value in message.items() if isinstance(message, dict) else ():
            # What an assistant turn echoed back by a client may hold: only empty it changes nothing.
            if name not in _MESSAGE_FIELDS and value not in (None, []):
                raise InvalidRequest(
                    f"messages[{i}].{name}: coserve does not support this field of a message",
                    param=f"messages[{i}].{name}",
                    code="unsupported_parameter",
                )


def _refuse_non_text_parts(i: int, content: Any) -> None:
    """InvalidRequest (400) naming the first content part of message ``i`` that is not text (an
    image, audio, a file): coserve carries text to its experts, whatever capability one declares."""
    for j, part in enumerate(content if isinstance(content, list) else []):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(kind, str) and kind != "text":
            what = "image input (vision)" if kind == "image_url" else "this content"
            raise InvalidRequest(
                f"messages[{i}].content[{j}].type: {kind!r} parts are not served; coserve sends its experts "
                f"text parts only, so no expert is given {what}",
                param=f"messages[{i}].content[{j}].type",
                code="unsupported_parameter",
            )


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body: the parameters coserve honours (``refuse_unsupported``
    answers the others before this model sees them, and ``_served_only`` drops what it let through)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage]
    stream: bool | None = None  # null is false, as in OpenAI's API
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    coserve: CoserveOptions | None = None
    # Identifiers of the end user or of a prompt cache: accepted, recorded nowhere, changing nothing
    # in the answer (OpenAI's answer does not depend on them either).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("messages must hold at least one message")
        return value

    def to_request(self) -> Request:
        """Range checks (422) and conversion to the internal Request."""
        if self.n is not None and self.n < 1:
            raise UnprocessableRequest("n must be at least 1", param="n")
        if self.n not in (None, 1):
            raise InvalidRequest("n: only n=1 is supported", param="n", code="unsupported_parameter")
        if self.stream_options is not None and not self.stream:  # as OpenAI and vLLM answer it
            raise InvalidRequest("stream_options: only allowed when stream is true", param="stream_options")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise InvalidRequest(
                "max_completion_tokens: differs from max_tokens (its deprecated alias); send one of them",
                param="max_completion_tokens",
            )
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        param = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        if max_tokens is not None and not 1 <= max_tokens <= MAX_TOKENS_CAP:
            raise UnprocessableRequest(f"{param} must be between 1 and {MAX_TOKENS_CAP}", param=param)
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise UnprocessableRequest("temperature must be between 0 and 2", param="temperature")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UnprocessableRequest("top_p must be greater than 0 and at most 1", param="top_p")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not -2.0 <= value <= 2.0:
                raise UnprocessableRequest(f"{name} must be between -2 and 2", param=name)
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= 20:
                raise UnprocessableRequest("top_logprobs must be between 0 and 20", param="top_logprobs")
            if not self.logprobs:
                raise InvalidRequest("top_logprobs: needs logprobs set to true", param="top_logprobs")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > 4:
            raise UnprocessableRequest("at most 4 stop sequences", param="stop")
        for i, turn in enumerate(self.messages):
            if turn.content is None and not getattr(turn, "tool_calls", None):
                why = f"messages[{i}].content: null only for an assistant message that calls tools"
                raise InvalidRequest(why, param=f"messages[{i}].content")
        messages = tuple(
            Message(
                m.role if m.role != "developer" else "system",
                m.text(),
                tool_calls_of(getattr(m, "tool_calls", None)),
                getattr(m, "tool_call_id", None),
            )
            for m in self.messages
        )
        check_tool_turns(messages)
        carries_calls = any(m.tool_calls or m.role == "tool" for m in messages)
        output = sampling_fields(self.tools, self.tool_choice, self.parallel_tool_calls, self.response_format)
        if not any(m.role == "user" for m in messages):
            raise UnprocessableRequest("messages must include a user message", param="messages")
        for i, message in enumerate(messages):
            if message.role == "user" and not message.content.strip():
                raise UnprocessableRequest(f"messages[{i}].content is empty", param=f"messages[{i}].content")
        options = self.coserve or CoserveOptions()
        return Request(
            messages=messages,
            model=self.model,
            sampling=Sampling(
                max_tokens=max_tokens,
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                seed=self.seed,
                stop=stop,
                presence_penalty=self.presence_penalty or 0.0,
                frequency_penalty=self.frequency_penalty or 0.0,
                logprobs=bool(self.logprobs),
                top_logprobs=self.top_logprobs or 0,
                **output,
            ),
            constraints=Constraints(
                max_params_b=options.max_params_b,
                max_price=options.max_price,
                min_context=options.min_context,
                require_tags=tuple(options.require_tags),
                exclude_experts=tuple(options.exclude_experts),
                budget=options.budget,
                capabilities=tuple(
                    name
                    for name, needed in (
                        ("logprobs", bool(self.logprobs)),
                        ("presence_penalty", bool(self.presence_penalty)),
                        ("frequency_penalty", bool(self.frequency_penalty)),
                        # calls asked for, or calls in the conversation (a template without tools drops them)
                        ("tools", ("tools" in output and output.get("tool_choice") != "none") or carries_calls),
                        ("json_schema", "response_format" in output),
                    )
                    if needed
                ),
            ),
            stream=bool(self.stream),
            stream_usage=bool(self.stream_options and self.stream_options.include_usage),
        )


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback`` body: a score for an answered request, by its ``id``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    score: float

    def check(self) -> None:
        """Range checks (422)."""
        if not -1.0 <= self.score <= 1.0:
            raise UnprocessableRequest("score must be between -1 and 1", param="score")


def json_body(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest (400) saying what is wrong with it."""
    if len(raw) > max_bytes:
        raise InvalidRequest(f"the body is larger than {max_bytes} bytes", code="body_too_large")
    try:
        data = json.loads(raw)
        # Valid JSON may still hold lone surrogates ("\ud800"), which no UTF-8 response can echo.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except UnicodeEncodeError:
        raise InvalidRequest("the body holds text that is not valid Unicode", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def parse_chat(raw: bytes, max_bytes: int, max_messages: int, unknown: UnknownParameters = "refuse") -> Request:
    """A chat completion body, strictly typed and range-checked, as the internal Request."""
    data = json_body(raw, max_bytes)
    refuse_unsupported(data, unknown)
    body = _validate(ChatCompletionRequest, _served_only(data))
    if len(body.messages) > max_messages:
        raise InvalidRequest(f"at most {max_messages} messages", param="messages")
    return body.to_request()


def _served_only(data: dict[str, Any]) -> dict[str, Any]:
    """The body without what ``refuse_unsupported`` let through: refused parameters at the value
    that asks for nothing, unknown ones when ignored, and the empty extra fields of messages."""
    known = ChatCompletionRequest.model_fields
    out = {name: value for name, value in data.items() if name in known}
    if isinstance(messages := out.get("messages"), list):
        out["messages"] = [_served_message(m) if isinstance(m, dict) else m for m in messages]
    return out


def _served_message(message: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: v for k, v in message.items() if k in _MESSAGE_FIELDS and (k in ("role", "content") or v not in (None, []))
    }
    if out.get("role") == "assistant" and out.get("tool_calls") and "content" not in out:
        out["content"] = None
    return out


def parse_feedback(raw: bytes, max_bytes: int) -> FeedbackRequest:
    """A feedback body, strictly typed and range-checked."""
    body = _validate(FeedbackRequest, json_body(raw, max_bytes))
    body.check()
    return body


def _validate(model: type[_Model], data: dict[str, Any]) -> _Model:
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _invalid(exc, data) from None


_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array"}


def _invalid(exc: ValidationError, data: dict[str, Any]) -> InvalidRequest:
    """The first error, at its deepest place (a union reports one error per member), as a 400."""
    errors = exc.errors()
    first = max(errors, key=lambda error: len(error["loc"]))
    tag = ("role",) if first["type"].startswith("union_tag_") else ()  # a message's role picks its model
    param = _param(tuple(first["loc"]) + tag, data, missing=first["type"] in ("missing", "union_tag_not_found"))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"].endswith("_type"):
        value = first.get("input")
        message += f", not {_JSON_TYPES.get(type(value), 'null' if value is None else 'an object')}"
    return InvalidRequest(f"{param}: {message}" if param else message, param=param or None)


def _param(loc: tuple[Any, ...], data: Any, *, missing: bool) -> str:
    """The field's path in the body (``messages[0].content``), without the union members pydantic names."""
    out, node = "", data
    for position, part in enumerate(loc):
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            out, node = out + f"[{part}]", node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            out, node = out + ("." if out else "") + part, node[part]
        elif isinstance(part, str) and missing and position == len(loc) - 1:
            out += ("." if out else "") + part  # a required field that is not there
    return out
