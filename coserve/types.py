"""Frozen messages passed between the stages of a request: route, schedule, stage, execute, answer.

Pydantic lives only at the HTTP edge (coserve.server.protocol); inside, these dataclasses are the
one vocabulary. What a request in flight learns on its way (decision, experts tried, lease, usage,
timings, status) is not here: it is written on its one mutable ``coserve.engine.call.Call``, which
carries the frozen ``Request`` (what the client asked) from HTTP to the backend and back.
This module knows nothing about HTTP, weights or runtimes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "ROUTED_MODEL",
    "Chunk",
    "Completion",
    "Constraints",
    "Decision",
    "Message",
    "Request",
    "Sampling",
    "Tier",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

ROUTED_MODEL = "coserve"  # the virtual model name that asks for routing (any other name pins an expert)


def new_request_id() -> str:
    """A request id unique across processes, forks and restarts: the decision log, feedback and the
    cluster's ingress replicas all key on it (a per-process counter with a millisecond clock gave two
    replicas the same id)."""
    return f"chatcmpl-{uuid.uuid4().hex}"


class Tier(StrEnum):
    """Where an expert's weights are: file only, host memory, or a loaded runtime."""

    DISK = "disk"
    RAM = "ram"
    ACTIVE = "active"


@dataclass(frozen=True)
class ToolCall:
    """A call of one of the request's tools, as the model asked for it (OpenAI's ``tool_calls[]``)."""

    id: str  # "call_..." : the id a later ``tool`` message answers
    name: str  # the function's name
    arguments: str  # the arguments, as JSON text (an object)


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls of the request's tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


@dataclass(frozen=True)
class Sampling:
    """Generation settings, validated at the edge."""

    max_tokens: int | None = None  # None: the expert's default cap
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from the logit of a token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per earlier occurrence of the token
    logprobs: bool = False  # return the sampled token's log-probability with each token
    top_logprobs: int = 0  # and this many most likely alternatives (0-20; needs ``logprobs``)
    # Structured output and tools, each as the client's own JSON text (forwarded unchanged by the
    # ``openai`` backend; coserve.backends.structured reads them for the local ones). None: not asked.
    response_format: str | None = None  # {"type": "json_object"} or {"type": "json_schema", ...}
    tools: str | None = None  # the ``tools`` list: [{"type": "function", "function": {...}}, ...]
    tool_choice: str | None = None  # "auto" | "required" | '{"type": "function", ...}' (None: auto)
    parallel_tool_calls: bool | None = None  # more than one call in an answer (None: as asked, true)


@dataclass(frozen=True)
class Constraints:
    """Per-request limits on which experts may answer (Tryage-style constraint flags)."""

    max_params_b: float | None = None  # billions of parameters
    max_price: float | None = None  # USD per million tokens (mean of input and output price)
    min_context: int | None = None  # tokens
    require_tags: tuple[str, ...] = ()
    exclude_experts: tuple[str, ...] = ()
    budget: float | None = None  # overrides a trained router's budget (its axis: params_b or price)
    # Request parameters the answering expert's backend must be able to apply (set at the edge from
    # the sampling settings, not a client flag): "logprobs", "presence_penalty", "frequency_penalty".
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    """What the client asked, created once at the edge and read by every stage (never changed)."""

    messages: tuple[Message, ...]
    model: str  # ROUTED_MODEL to route, or an expert's name to pin
    sampling: Sampling = field(default_factory=Sampling)
    constraints: Constraints = field(default_factory=Constraints)
    stream: bool = False
    stream_usage: bool = False  # streamed: end with a usage chunk (OpenAI stream_options.include_usage)
    id: str = field(default_factory=new_request_id)

    def last_user_turn(self) -> str:
        """The text the router embeds: the conversation's last user message."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content if self.messages else ""


@dataclass(frozen=True)
class Decision:
    """Which expert answers a request, and why."""

    expert: str
    category: str | None  # None when the expert was pinned by name
    confidence: float  # top category probability, 1.0 when pinned
    alternatives: tuple[str, ...]  # next-best experts, in order, for fallback
    reason: str  # "routed" | "pinned" | "low_confidence" | "constrained"
    probabilities: dict[str, float] = field(default_factory=dict)  # category -> probability
    map_version: int | None = None  # the online router's map version (None without router.online)
    predicted: dict[str, float] | None = None  # expert -> per-prompt predicted score the online router routed by
    narrowed_by: tuple[str, ...] = ()  # capabilities the first choice lacked ("tools", ...) when they moved it

    def as_dict(self) -> dict[str, object]:
        """The public ``coserve`` object of a response (``narrowed_by`` only when a capability moved it)."""
        out: dict[str, object] = {
            "expert": self.expert,
            "category": self.category,
            "confidence": round(self.confidence, 4),
            "alternatives": list(self.alternatives),
            "reason": self.reason,
        }
        if self.narrowed_by:
            out["narrowed_by"] = list(self.narrowed_by)
        return out


@dataclass(frozen=True)
class Usage:
    """Token counts of one completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and its natural-log probability, with the most likely alternatives
    (OpenAI's ``logprobs.content[]`` entry; ``top`` is empty unless ``top_logprobs`` was asked)."""

    token: str
    logprob: float
    token_bytes: bytes
    top: tuple[tuple[str, float, bytes], ...] = ()  # (token, logprob, bytes), most likely first


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of a tool call (OpenAI's ``delta.tool_calls[]``): the first piece of a call
    carries its ``id`` and ``name``, later ones only more of its ``arguments`` text."""

    index: int  # the call's place in the answer's calls
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of a completion; the last carries finish_reason and usage.

    ``logprobs`` holds one entry per token whose text this chunk carries, when the request asked
    for them (``Sampling.logprobs``); otherwise it is empty. ``tool_calls`` holds pieces of the
    answer's tool calls (finish_reason ``tool_calls``)."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class Completion:
    """A finished completion."""

    text: str
    finish_reason: str  # "stop" | "length" | "tool_calls"
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] = ()  # one per generated token, when the request asked
    tool_calls: tuple[ToolCall, ...] = ()  # the calls of the request's tools the answer makes
