"""A deterministic fake backend for tests: no weights, scripted speed and faults.

Its real twins are the llama.cpp backends (``llamacpp-split``, ``llamacpp``); tests that use this
fake have end-to-end counterparts that run the real experts. Behaviour is read from the expert's ``options``:

* ``nbytes``: bytes of the expert's "weights" (default 100 MB); ``footprint``: bytes it occupies
  when ACTIVE (default: ``nbytes``);
* ``fail_measure``: raise RuntimeError when the pool measures the expert (an unexpected error);
* ``load_delay`` / ``token_delay``: seconds to load / per generated token;
* ``fail_load``: raise ExpertLoadError on load; ``fail_load_oom``: raise MemoryError on load;
* ``fail_generate``: raise ExpertFailed before the first token;
* ``fail_after_tokens``: raise ExpertFailed after that many streamed tokens;
* ``context``: the expert's ``context`` field bounds prompt words (a word is a token here).

The answer is ``"<expert> says: "`` followed by the prompt's words, repeated up to ``max_tokens``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from coserve.backends.base import Emit, Handle
from coserve.config import ExpertSpec
from coserve.errors import ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["FakeBackend"]


class _Staged:
    """The fake RAM tier: remembers whether it was released."""

    def __init__(self, name: str):
        self.name = name
        self.released = False

    def release(self) -> None:
        self.released = True


class FakeBackend:
    """Scripted stand-in for a model runtime."""

    name = "fake"

    def __init__(self) -> None:
        self.loads: list[str] = []  # expert names, in load order
        self.unloads: list[str] = []
        self.stages: list[str] = []  # DISK -> RAM moves
        self.unstages: list[str] = []
        self.active_loads = 0
        self.max_concurrent_loads = 0
        self._lock = threading.Lock()

    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        if spec.options.get("fail_measure"):
            raise RuntimeError(f"expert {spec.name!r}: measuring failed (injected unexpected error)")
        return int(spec.options.get("nbytes", 100 * 2**20))

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        return int(spec.options.get("footprint", self.nbytes(spec, base)))

    def stage(self, spec: ExpertSpec, base: Path | None) -> _Staged:
        if spec.options.get("fail_stage"):
            raise ExpertLoadError(f"expert {spec.name!r}: its file cannot be read (injected fault)")
        with self._lock:
            self.stages.append(spec.name)
        return _Staged(spec.name)

    def unstage(self, staged: _Staged) -> None:
        staged.release()
        with self._lock:
            self.unstages.append(staged.name)

    def load(self, spec: ExpertSpec, base: Path | None) -> Handle:
        with self._lock:
            self.active_loads += 1
            self.max_concurrent_loads = max(self.max_concurrent_loads, self.active_loads)
        try:
            start = time.monotonic()
            time.sleep(float(spec.options.get("load_delay", 0.0)))
            if spec.options.get("fail_load"):
                raise ExpertLoadError(f"expert {spec.name!r} failed to load (injected fault)")
            if spec.options.get("fail_load_oom"):
                raise MemoryError(f"cannot allocate memory for expert {spec.name!r} (injected fault)")
            with self._lock:
                self.loads.append(spec.name)
            return Handle(
                spec, runtime={"alive": True}, nbytes=self.nbytes(spec, base), load_seconds=time.monotonic() - start
            )
        finally:
            with self._lock:
                self.active_loads -= 1

    def unload(self, handle: Handle) -> None:
        handle.runtime["alive"] = False
        with self._lock:
            self.unloads.append(handle.spec.name)

    def _tokens(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling) -> tuple[list[str], int]:
        if not handle.runtime["alive"]:
            raise ExpertFailed(f"expert {handle.spec.name!r} was unloaded")
        prompt_words = [w for m in messages for w in m.content.split()]
        if len(prompt_words) > handle.spec.context:
            raise ContextTooLong(
                f"the prompt ({len(prompt_words)} tokens) exceeds the context of expert "
                f"{handle.spec.name!r} ({handle.spec.context} tokens)",
                param="messages",
            )
        if handle.spec.options.get("fail_generate"):
            raise ExpertFailed(f"expert {handle.spec.name!r} failed (injected fault)")
        limit = sampling.max_tokens or 16
        words = [f"{handle.spec.name}", "says:"] + (prompt_words or ["nothing"]) * limit
        return words[:limit], len(prompt_words)

    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        words, prompt_tokens = self._tokens(handle, messages, sampling)
        delay = float(handle.spec.options.get("token_delay", 0.0))
        fail_after = handle.spec.options.get("fail_after_tokens")
        for i, word in enumerate(words):
            if fail_after is not None and i >= int(fail_after):
                raise ExpertFailed(f"expert {handle.spec.name!r} crashed mid-stream (injected fault)")
            time.sleep(delay)
            if emit(Chunk(word if i == 0 else " " + word)):
                return
        finish = "length" if len(words) == (sampling.max_tokens or 16) else "stop"
        emit(Chunk("", finish, Usage(prompt_tokens, len(words))))
