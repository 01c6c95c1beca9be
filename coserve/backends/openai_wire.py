"""The sampling, tools and response-format part of an OpenAI-style chat body, and the
log-probabilities and tool-call deltas in an OpenAI-style answer, for the backends that speak
that wire to their runtime (``llamacpp``: llama.cpp's server inside xllamacpp; ``openai``: a
remote endpoint).

It knows nothing about transports, streaming or the engine.
"""

from __future__ import annotations

import json
from typing import Any

from coserve.backends.chores import token_cap
from coserve.config import ExpertSpec
from coserve.types import Sampling, TokenLogprob, ToolCallDelta

__all__ = ["choice_logprobs", "choice_tool_calls", "sampling_body"]


def sampling_body(spec: ExpertSpec, sampling: Sampling) -> dict[str, Any]:
    """``max_tokens``, ``temperature``, ``top_p`` and, when the request set them, ``seed``,
    ``stop``, the presence/frequency penalties and ``logprobs``/``top_logprobs``."""
    body: dict[str, Any] = {
        "max_tokens": token_cap(spec, sampling),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    if sampling.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = sampling.top_logprobs
    if sampling.response_format is not None:  # the client's own objects, unchanged
        body["response_format"] = json.loads(sampling.response_format)
    if sampling.tools is not None:
        body["tools"] = json.loads(sampling.tools)
        if sampling.parallel_tool_calls is not None:  # sent only as the client sent it
            body["parallel_tool_calls"] = sampling.parallel_tool_calls
    if sampling.tool_choice is not None:
        choice = sampling.tool_choice
        body["tool_choice"] = choice if choice in ("none", "auto", "required") else json.loads(choice)
    return body


def choice_tool_calls(choice: dict[str, Any]) -> tuple[ToolCallDelta, ...]:
    """The ``delta.tool_calls`` pieces of one streamed choice (empty when it has none)."""
    out = []
    for entry in (choice.get("delta") or {}).get("tool_calls") or []:
        function = entry.get("function") or {}
        out.append(
            ToolCallDelta(
                int(entry.get("index", 0)), entry.get("id"), function.get("name"), function.get("arguments") or ""
            )
        )
    return tuple(out)


def _raw(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    return bytes(raw) if isinstance(raw, list) else str(entry.get("token", "")).encode("utf-8")


def choice_logprobs(choice: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    """The ``logprobs.content`` entries of one choice (empty when it has none)."""
    content = (choice.get("logprobs") or {}).get("content") or []
    return tuple(
        TokenLogprob(
            str(entry.get("token", "")),
            float(entry["logprob"]),
            _raw(entry),
            tuple((str(t.get("token", "")), float(t["logprob"]), _raw(t)) for t in entry.get("top_logprobs") or []),
        )
        for entry in content
    )
