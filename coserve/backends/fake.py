"""A deterministic fake backend for tests: no weights, scripted speed and faults.

Its real twins are the llama.cpp backends (``llamacpp-split``, ``llamacpp``); tests that use this
fake have end-to-end counterparts that run the real experts. Behaviour is read from the expert's ``options``:

* ``nbytes``: bytes of the expert's "weights" (default 100 MB); ``footprint``: bytes it occupies
  when ACTIVE (default: ``nbytes``);
* ``fail_measure``: raise RuntimeError when the pool measures the expert (a contract breach the
  pool must survive);
* ``load_delay`` / ``token_delay``: seconds to load / per generated token;
* ``fail_stage`` / ``fail_load``: raise ExpertLoadError on stage / load; ``fail_load_oom``: the
  ExpertLoadError of a runtime that ran out of memory;
* ``fail_generate``: raise ExpertFailed before the first token;
* ``fail_after_tokens``: raise ExpertFailed after that many streamed tokens;
* ``n_parallel``: its declared concurrency (default 2);
* ``context``: the expert's ``context`` field bounds prompt words (a word is a token here);
  ``prompt_counter`` counts them without loading (``counts: false``: the fake offers none, as a
  backend whose tokenizer is known only once loaded); ``tokens_per_word`` (default 1) makes it
  a tokenizer of another granularity, for both;
* ``logprobs``: false makes it a runtime that cannot give log-probabilities (a request asking for
  them is refused with a 400 naming ``logprobs``, as by ``transformers``); by default each word
  comes with the log-probability ``-0.125 * (i % 4)`` (``i``: its place in the answer) and, when
  ``top_logprobs`` is k, itself followed by ``<alt1>`` .. ``<alt{k-1}>`` at 1, 2, ... less.
  Presence and frequency penalties are accepted and change nothing in the scripted answer.

The answer is ``"<expert> says: "`` followed by the prompt's words, repeated up to the token cap
(coserve.backends.chores; 16 when neither the request nor the expert names one), cut at the first
stop string. A request whose ``tool_choice`` forces a call (``required`` or a named function) gets
instead ``<tool_call>{"name": <the first such function>, "arguments": {"echo": <the last
prompt word>}}</tool_call>`` in pieces of 8 characters, one per token, parsed into a tool call as a
local expert's answer is (coserve.backends.tool_calls). It keeps the backend contract
(coserve.backends.base) and runs through the same conformance test as its real twins
(tests/test_backend_contract.py).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from coserve.backends.base import Emit, Handle, PromptCounter
from coserve.backends.call_stream import answer_outlet
from coserve.backends.chores import StopStrings, check_context, declared_concurrency, refuse_sampling, token_cap
from coserve.backends.structured import CALL_CLOSE, CALL_OPEN, forced_tool_names
from coserve.config import ExpertSpec
from coserve.errors import ExpertFailed, ExpertLoadError
from coserve.types import Message, Sampling, TokenLogprob, Usage

__all__ = ["FakeBackend"]


class _Staged:
    """The fake RAM tier: remembers whether it was unstaged."""

    def __init__(self, name: str):
        self.name = name
        self.released = False


class FakeBackend:
    """Scripted stand-in for a model runtime."""

    def __init__(self) -> None:
        self.loads: list[str] = []  # expert names, in load order
        self.unloads: list[str] = []
        self.stages: list[str] = []  # DISK -> RAM moves
        self.unstages: list[str] = []  # RAM -> DISK moves
        self.counters: list[str] = []  # experts whose prompt counter was built
        self.active_loads = 0
        self.max_concurrent_loads = 0
        self._lock = threading.Lock()

    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        if spec.options.get("fail_measure"):
            raise RuntimeError(f"expert {spec.name!r}: measuring failed (injected unexpected error)")
        return int(spec.options.get("nbytes", 100 * 2**20))

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        return int(spec.options.get("footprint", self.nbytes(spec, base)))

    def concurrency(self, spec: ExpertSpec) -> int:
        return declared_concurrency(spec, 2)

    def prompt_counter(self, spec: ExpertSpec, base: Path | None) -> PromptCounter | None:
        if not spec.options.get("counts", True):
            return None
        with self._lock:
            self.counters.append(spec.name)
        return lambda messages, sampling: _tokens(spec, messages)

    def stage(self, spec: ExpertSpec, base: Path | None) -> _Staged:
        if spec.options.get("fail_stage"):
            raise ExpertLoadError(f"expert {spec.name!r}: its file cannot be read (injected fault)")
        with self._lock:
            self.stages.append(spec.name)
        return _Staged(spec.name)

    def unstage(self, staged: _Staged) -> None:
        staged.released = True
        with self._lock:
            self.unstages.append(staged.name)

    def load(self, spec: ExpertSpec, staged: _Staged) -> Handle:
        if staged.released or staged.name != spec.name:
            raise ExpertLoadError(f"expert {spec.name!r}: loaded from a staged object that is not its own")
        with self._lock:
            self.active_loads += 1
            self.max_concurrent_loads = max(self.max_concurrent_loads, self.active_loads)
        try:
            time.sleep(float(spec.options.get("load_delay", 0.0)))
            if spec.options.get("fail_load"):
                raise ExpertLoadError(f"expert {spec.name!r} failed to load (injected fault)")
            if spec.options.get("fail_load_oom"):
                raise ExpertLoadError(f"expert {spec.name!r}: cannot allocate memory (injected fault)")
            with self._lock:
                self.loads.append(spec.name)
            return Handle(spec, runtime={"alive": True, "staged": staged})
        finally:
            with self._lock:
                self.active_loads -= 1

    def unload(self, handle: Handle) -> None:
        handle.runtime["alive"] = False
        with self._lock:
            self.unloads.append(handle.spec.name)

    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        spec = handle.spec
        if not handle.runtime["alive"]:
            raise ExpertFailed(f"expert {spec.name!r} was unloaded")
        prompt_words = _words(messages)
        check_context(spec, _tokens(spec, messages))
        if spec.options.get("fail_generate"):
            raise ExpertFailed(f"expert {spec.name!r} failed (injected fault)")
        logprobs = bool(spec.options.get("logprobs", True))
        refuse_sampling(spec, sampling, logprobs=logprobs, penalties=True, structured=True)
        cap = token_cap(spec, sampling, len(prompt_words), default=16)  # short answers for tests
        pieces = _pieces(spec.name, prompt_words, sampling, cap)
        delay = float(spec.options.get("token_delay", 0.0))
        fail_after = spec.options.get("fail_after_tokens")
        stops = StopStrings(sampling.stop)
        outlet = answer_outlet(emit, sampling)
        for i, piece in enumerate(pieces):
            if fail_after is not None and i >= int(fail_after):
                raise ExpertFailed(f"expert {spec.name!r} crashed mid-stream (injected fault)")
            time.sleep(delay)
            if sampling.logprobs:
                outlet.pending.append(_logprob(piece, i, sampling.top_logprobs))
            text, hit = stops.feed(piece)
            if outlet.text(text):
                return
            if hit:
                outlet.end("stop", Usage(len(prompt_words), i + 1))
                return
        if outlet.text(stops.flush()):
            return
        outlet.end("stop" if len(pieces) < cap else "length", Usage(len(prompt_words), len(pieces)))


def _tokens(spec: ExpertSpec, messages: tuple[Message, ...]) -> int:
    """The prompt's tokens: its words, times ``tokens_per_word``."""
    return len(_words(messages)) * int(spec.options.get("tokens_per_word", 1))


def _words(messages: tuple[Message, ...]) -> list[str]:
    """The prompt's words (the fake's tokens)."""
    return [w for m in messages for w in m.content.split()]


def _pieces(name: str, prompt_words: list[str], sampling: Sampling, cap: int) -> list[str]:
    """The scripted answer, one piece per token: a forced tool call, or the expert's words."""
    forced = forced_tool_names(sampling)
    if forced:
        body = json.dumps({"name": forced[0], "arguments": {"echo": (prompt_words or ["nothing"])[-1]}})
        call = f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"
        return [call[i : i + 8] for i in range(0, len(call), 8)][:cap]
    words = ([name, "says:"] + (prompt_words or ["nothing"]) * cap)[:cap]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def _logprob(piece: str, place: int, top: int) -> TokenLogprob:
    """The scripted log-probability of the word at ``place`` and its ``top`` alternatives."""
    logprob = -0.125 * (place % 4)
    alternatives = [(piece, logprob)] + [(f"<alt{j}>", logprob - j) for j in range(1, top)]
    return TokenLogprob(piece, logprob, piece.encode(), tuple((t, lp, t.encode()) for t, lp in alternatives[:top]))
