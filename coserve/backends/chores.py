"""The chores every backend does the same way, written once: the token cap, the context check and
its one message, the declared concurrency, stop strings, the first-token check of a load, and the
refusal of sampling features a runtime cannot apply.

Each backend calls these so that the contract in coserve.backends.base holds the same everywhere.
This module knows nothing about any runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coserve.backends.structured import tool_names, wire_message
from coserve.config import ExpertSpec
from coserve.errors import ContextTooLong, ExpertLoadError, InvalidRequest
from coserve.types import Message, Sampling

if TYPE_CHECKING:
    from coserve.backends.base import Backend, Handle

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "StopStrings",
    "check_context",
    "context_too_long",
    "declared_concurrency",
    "fits_context",
    "refuse_sampling",
    "token_cap",
    "validated",
    "wire_messages",
]

DEFAULT_MAX_TOKENS = 512  # tokens: the cap when neither the request nor the expert names one


def token_cap(
    spec: ExpertSpec,
    sampling: Sampling,
    prompt_tokens: int | None = None,
    default: int = DEFAULT_MAX_TOKENS,
    context: int | None = None,
) -> int:
    """Tokens this request may generate: the request's ``max_tokens``, else the expert's
    ``options.max_tokens``, else ``default``; never past the end of the context (``context``, else
    the expert's) when the prompt's length is known; at least 1."""
    cap = sampling.max_tokens or int(spec.options.get("max_tokens", default))
    if prompt_tokens is not None:
        cap = min(cap, (context or spec.context) - prompt_tokens)
    return max(1, cap)


def context_too_long(
    spec: ExpertSpec, prompt_tokens: int | None, context: int | None = None, *, tools_tokens: int | None = None
) -> ContextTooLong:
    """The one error (and message) for a prompt that does not fit an expert's context; ``param``
    ``tools`` when ``tools_tokens`` (the rendered tools' share of the prompt) is given: the tools
    are what pushed it over, the conversation alone would fit."""
    size = f"({prompt_tokens} tokens) " if prompt_tokens is not None else ""
    if tools_tokens is not None:
        size = f"({prompt_tokens} tokens, {tools_tokens} of them the rendered tools) "
    return ContextTooLong(
        f"the prompt {size}exceeds the context of expert {spec.name!r} ({context or spec.context} tokens)",
        param="messages" if tools_tokens is None else "tools",
    )


def check_context(spec: ExpertSpec, prompt_tokens: int, context: int | None = None) -> None:
    """Raise ContextTooLong unless the prompt leaves room for at least one generated token."""
    if not fits_context(spec, prompt_tokens, context):
        raise context_too_long(spec, prompt_tokens, context)


def fits_context(spec: ExpertSpec, prompt_tokens: int, context: int | None = None) -> bool:
    """Whether the prompt leaves room for at least one generated token."""
    return prompt_tokens + 1 <= (context or spec.context)


def refuse_sampling(
    spec: ExpertSpec, sampling: Sampling, *, logprobs: bool, penalties: bool, structured: bool = False
) -> None:
    """InvalidRequest (400, naming the parameter) when the request asks for log-probabilities, a
    nonzero presence/frequency penalty, tool calls or a JSON ``response_format`` and this expert's
    runtime cannot give them (``logprobs`` / ``penalties`` / ``structured``: whether it can). Called
    by ``stream`` before anything is generated."""
    wanted = []
    if not structured:
        wanted += ["tools"] if tool_names(sampling) else []
        wanted += ["response_format"] if sampling.response_format is not None else []
    if sampling.logprobs and not logprobs:
        wanted.append("logprobs")
    if not penalties:
        wanted += [name for name in ("presence_penalty", "frequency_penalty") if getattr(sampling, name)]
    if wanted:
        raise InvalidRequest(
            f"{wanted[0]}: expert {spec.name!r} (backend {spec.backend}) cannot apply it",
            param=wanted[0],
            code="unsupported_parameter",
        )


def declared_concurrency(spec: ExpertSpec, default: int) -> int:
    """Requests of this expert a runtime with slots runs at once: ``options.n_parallel`` or its default."""
    return max(1, int(spec.options.get("n_parallel", default)))


def wire_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The chat turns as OpenAI-style dicts (with their tool calls and call ids: what runtimes read)."""
    return [wire_message(m) for m in messages]


class StopStrings:
    """Cuts streamed text at the first stop string; holds back a tail that may begin one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text safe to emit now, and whether a stop string was met (generation must end)."""
        if not self.stops:
            return text, False
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held = self.held[: min(hits)], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.held)), keep, -1):
                if self.held.endswith(stop[:k]):
                    keep = k
                    break
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out, False

    def flush(self) -> str:
        """What was held back (the stream ended without meeting a stop string)."""
        out, self.held = self.held, ""
        return out


def validated(backend: Backend, handle: Handle) -> Handle:
    """Check a freshly loaded expert with one greedy token through its chat template (before the
    pool releases anyone for it); on failure unload it and raise ExpertLoadError."""
    try:
        backend.stream(handle, (Message("user", "Hi"),), Sampling(max_tokens=1, temperature=0.0), lambda chunk: False)
    except Exception as exc:
        backend.unload(handle)
        raise ExpertLoadError(f"expert {handle.spec.name!r} loaded but failed its first generation: {exc}") from None
    return handle
