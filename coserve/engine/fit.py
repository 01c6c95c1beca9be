"""Whether a prompt fits an expert's context, known before the expert is queued or loaded.

A backend may offer ``prompt_counter`` (coserve.backends.base): a counter of a request's prompt
tokens exactly as its ``stream`` counts them, built from the expert's tokenizer without loading
the expert (llamacpp-split: llama.cpp's vocabulary-only model). The engine asks, for each expert
of a decision, whether the prompt surely does not fit (``PromptFit.too_long``): such an expert is
skipped as if its ``stream`` had refused the prompt (the same ContextTooLong, the same message),
so a prompt too long for every candidate is refused 413 at once instead of after a load, and one
too long for the chosen expert goes to an alternative with a larger context without loading the
chosen one first.

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
    """The experts a request's prompt surely does not fit, from their own tokenizers."""

    def __init__(self, pool: ExpertPool, executor: Executor):
        self.pool = pool
        self.executor = executor
        self._counters: dict[str, PromptCounter | None] = {}  # expert -> its counter (None: none)
        self._lock = threading.Lock()  # one build per expert

    async def too_long(self, names: tuple[str, ...], request: Request) -> dict[str, ContextTooLong]:
        """Expert -> the error its ``stream`` would raise, for each of ``names`` whose context the
        request's prompt surely exceeds (the others are not in it)."""
        size = _bytes(request) + TEMPLATE_ROOM
        suspects = [n for n in names if size >= self.pool.library.expert(n).context + 1]
        if not suspects:
            return {}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._check, suspects, request)

    def _check(self, names: list[str], request: Request) -> dict[str, ContextTooLong]:
        errors: dict[str, ContextTooLong] = {}
        for name in names:
            spec = self.pool.library.expert(name)
            try:
                error = self._refusal(spec, request)
            except Exception:  # a counter that fails leaves the check to ``stream``
                error = None
            if error is not None:
                errors[name] = error
        return errors

    def _refusal(self, spec: ExpertSpec, request: Request) -> ContextTooLong | None:
        count = self._counter(spec)
        tokens = count(request.messages, request.sampling) if count is not None else None
        if tokens is None or fits_context(spec, tokens):
            return None
        if request.sampling.tools:  # the tools' share, as ``stream`` names it when they are to blame
            bare = count(request.messages, replace(request.sampling, tools=None, tool_choice=None))  # type: ignore[misc]
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
