"""What goes on the wire: OpenAI-style response bodies, SSE frames and error bodies.

Every body a chat request gets is written here: the ``chat.completion`` object, the
``chat.completion.chunk`` frames of a stream (first with the role, then content and tool-call
deltas, then the finish reason, then the usage chunk when asked for), the error event that ends a failed stream, the
``[DONE]`` frame, the ``x-coserve-*`` headers, and the error responses of every route. All of it is
read from the request's ``Call``.

This module knows nothing about routing, admission or how the engine runs a request.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.responses import JSONResponse

from coserve.engine.call import Call
from coserve.errors import CoserveError
from coserve.types import Completion, TokenLogprob, ToolCallDelta, Usage

__all__ = [
    "DONE",
    "EXPOSED_HEADERS",
    "INTERNAL_ERROR",
    "Frames",
    "completion_body",
    "error_body",
    "error_response",
    "headers",
    "logprobs_body",
    "sse",
]

DONE = b"data: [DONE]\n\n"


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


INTERNAL_ERROR = error_body("internal server error", "server_error", None, "internal_error")


def error_response(exc: CoserveError) -> JSONResponse:
    """The HTTP response of a CoserveError: its body, status and headers (Retry-After)."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def logprobs_body(entries: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """A choice's ``logprobs`` object in OpenAI's shape: ``{"content": [{token, logprob, bytes,
    top_logprobs: [{token, logprob, bytes}]}], "refusal": null}``."""
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "bytes": list(entry.token_bytes),
                "top_logprobs": [
                    {"token": token, "logprob": logprob, "bytes": list(raw)} for token, logprob, raw in entry.top
                ],
            }
            for entry in entries
        ],
        "refusal": None,
    }


def _coserve_field(call: Call) -> dict[str, Any]:
    assert call.decision is not None and call.expert is not None
    field = call.decision.as_dict()
    field["expert"] = call.expert
    if call.tried:
        field["fallback_from"] = list(call.tried)
    if call.steps:
        field["cascade"] = [step.as_dict() for step in call.steps]  # routing.mode: cascade, every step
    return field


# The response headers a browser page on another origin may read (CORS, ``server.cors_origins``).
EXPOSED_HEADERS = (
    "x-coserve-expert",
    "x-coserve-category",
    "x-coserve-fallback-from",
    "x-coserve-node",
    "x-coserve-ingress",  # a Ray cluster's ingress replica (coserve.distributed.cluster_state.mark_replica)
    "retry-after",
)


def headers(call: Call) -> dict[str, str]:
    """The ``x-coserve-*`` headers of an answered call: who answered, the category, the fallback path."""
    assert call.decision is not None and call.expert is not None
    out = {"x-coserve-expert": call.expert, "x-coserve-category": call.decision.category or ""}
    if call.tried:
        out["x-coserve-fallback-from"] = ",".join(call.tried)
    if call.node is not None:
        out["x-coserve-node"] = call.node
    return out


def completion_body(call: Call, completion: Completion) -> dict[str, Any]:
    """The ``chat.completion`` object of a non-streamed answer."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text}
    if completion.tool_calls:  # as OpenAI answers: content null when the answer is only calls
        message["content"] = completion.text or None
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ]
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": completion.finish_reason}
    if call.request.sampling.logprobs:
        choice["logprobs"] = logprobs_body(completion.logprobs)
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.expert,
        "choices": [choice],
        "usage": _usage(completion.usage),
        "coserve": _coserve_field(call),
    }


class Frames:
    """The SSE frames of one streamed answer (one ``created`` time for all of them)."""

    def __init__(self, call: Call):
        self.call = call
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        base = {"id": self.call.id, "object": "chat.completion.chunk", "created": self.created}
        return sse({**base, "model": self.call.expert, "choices": choices, **extra})

    def _delta(
        self, delta: dict[str, Any], finish: str | None, logprobs: tuple[TokenLogprob, ...] = (), **extra: Any
    ) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = logprobs_body(logprobs)
        return self._chunk([choice], **extra)

    def role(self) -> bytes:
        """The first frame: the assistant's role, and the ``coserve`` object (who answers, why)."""
        return self._delta({"role": "assistant", "content": ""}, None, coserve=_coserve_field(self.call))

    def content(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> bytes:
        """A piece of the answer, with the log-probabilities of its tokens when they were asked for."""
        return self._delta({"content": text}, None, logprobs)

    def tool_calls(self, deltas: tuple[ToolCallDelta, ...]) -> bytes:
        """Pieces of tool calls: a call's first carries its id, type and name, later ones arguments."""
        entries: list[dict[str, Any]] = []
        for delta in deltas:
            entry: dict[str, Any] = {"index": delta.index}
            if delta.id is not None:
                entry.update(id=delta.id, type="function", function={"name": delta.name, "arguments": delta.arguments})
            else:
                entry["function"] = {"arguments": delta.arguments}
            entries.append(entry)
        return self._delta({"tool_calls": entries}, None)

    def finish(self, reason: str) -> bytes:
        return self._delta({}, reason)

    def usage(self, usage: Usage) -> bytes:
        """The final usage chunk (OpenAI's ``stream_options.include_usage``): no choices."""
        return self._chunk([], usage=_usage(usage))

    @staticmethod
    def error(exc: BaseException) -> bytes:
        """The event that ends a stream failing after its first token."""
        return sse(exc.body() if isinstance(exc, CoserveError) else INTERNAL_ERROR)
