"""Whether a prompt fits an expert's context, known before the expert is queued or loaded.

A backend may offer ``prompt_counter`` (coserve.backends.base): a counter of a request's prompt
tokens exactly as its ``stream`` counts them, built from the expert's tokenizer without loading
the expert (llamacpp-split and llamacpp: llama.cpp's vocabulary-only model; transformers and vllm: the
model's Hugging Face tokenizer and chat template; openai has none: its tokenizer is remote). Before a
call is queued, the engine asks ``PromptFit.verdicts`` about the decision's experts in order, up to the first one the
prompt fits: an expert it surely does not fit is skipped as if its ``stream`` had refused the
prompt (the same ContextTooLong, the same message), so a prompt too long for every candidate is
refused 413 at once instead of after a load, and one too long for the chosen expert goes to an
alternative without loading the chosen one. An alternative with the same context but another
tokenizer is tried when its own count fits (the engine otherwise skips contexts no larger than one
the prompt did not fit).

Only a prompt that might not fit is counted: one whose UTF-8 bytes, with ``TEMPLATE_ROOM`` bytes
for the chat template, reach the expert's context (a token covers at least one byte, so a shorter
prompt fits). A counter is built once per expert, on the first such prompt, and kept. The count is
the expert's own, never an estimate, so a prompt that fits is never refused here; where a backend
offers no counter, or building or running it fails, the expert is tried as before and its
``stream`` refuses the prompt once loaded.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor
from dataclasses import replace

from coserve.backends.base import PromptCounter
from coserve.backends.chores import context_too_long, fits_context
from coserve.config import ExpertSpec
from coserve.engine.pool import ExpertPool
from coserve.errors import ContextTooLong
from coserve.types import Request

__all__ = ["TEMPLATE_ROOM", "PromptFit"]

TEMPLATE_ROOM = 1024  # bytes: what a chat template adds around the messages, at most (to count or not)


class PromptFit:
    """What experts' own tokenizers say of a request's prompt against their contexts."""

    def __init__(self, pool: ExpertPool, executor: Executor):
        self.pool = pool
        self.executor = executor
        self._counters: dict[str, PromptCounter | None] = {}  # expert -> its counter (None: none)
        self._lock = threading.Lock()  # one build per expert

    async def verdicts(self, names: tuple[str, ...], request: Request) -> dict[str, ContextTooLong | None]:
        """What is known of the prompt against the experts ``names``, in their order: expert -> the
        error its ``stream`` would raise (the prompt surely does not fit), or None (it surely fits).
        Stops at the first expert the prompt fits or whose count is unknown (not in the result):
        the request goes there, and the ones after it matter only if it fails."""
        size = _bytes(request) + TEMPLATE_ROOM
        if not names or size < self.pool.library.expert(names[0]).context + 1:
            return {}  # the first fits: nothing to count
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._verdicts, names, request, size)

    def _verdicts(self, names: tuple[str, ...], request: Request, size: int) -> dict[str, ContextTooLong | None]:
        known: dict[str, ContextTooLong | None] = {}
        for name in names:
            spec = self.pool.library.expert(name)
            if size < spec.context + 1:  # a token covers at least a byte: it fits
                known[name] = None
                return known
            try:
                tokens = self._count(spec, request)
            except Exception:  # a counter that fails leaves the check to ``stream``
                tokens = None
            if tokens is None:
                return known
            known[name] = self._refusal(spec, request, tokens)
            if known[name] is None:
                return known
        return known

    def _count(self, spec: ExpertSpec, request: Request) -> int | None:
        count = self._counter(spec)
        return count(request.messages, request.sampling) if count is not None else None

    def _refusal(self, spec: ExpertSpec, request: Request, tokens: int) -> ContextTooLong | None:
        """None when ``tokens`` fit the expert's context, else the error its ``stream`` raises."""
        if fits_context(spec, tokens):
            return None
        if request.sampling.tools:  # the tools' share, as ``stream`` names it when they are to blame
            bare = self._count(spec, replace(request, sampling=replace(request.sampling, tools=None, tool_choice=None)))  # type: ignore[misc]
            if bare is not None and fits_context(spec, bare):
                return context_too_long(spec, tokens, tools_tokens=tokens - bare)
        return context_too_long(spec, tokens)

    def _counter(self, spec: ExpertSpec) -> PromptCounter | None:
        with self._lock:
            if spec.name not in self._counters:
                build = getattr(self.pool.backends[spec.name], "prompt_counter", None)
                try:
                    self._counters[spec.name] = build(spec, self.pool.base) if build is not None else None
                except Exception:  # no file yet, a bad file: ``stream`` checks after the load
                    return None  # not kept: the next long prompt tries again
            return self._counters[spec.name]


def _bytes(request: Request) -> int:
    """UTF-8 bytes of what the template renders from the request: its messages and tools."""
    text = sum(len(m.content.encode()) for m in request.messages)
    calls = sum(len(c.arguments.encode()) + len(c.name) for m in request.messages for c in m.tool_calls)
    return text + calls + len((request.sampling.tools or "").encode())
