"""The Backend contract: how the pool moves an expert between tiers and the engine generates with it.

An expert lives in one of three tiers (coserve.types.Tier); one verb per move, used everywhere:

    DISK --stage--> RAM --load--> ACTIVE        ACTIVE --unload--> RAM --unstage--> DISK

    stage(spec, base) -> staged     DISK -> RAM: hold the weights in host memory. ``staged`` is the
                                    backend's own object and the ONLY record of the RAM tier: the
                                    pool keeps it and hands it back; the backend keeps no per-expert
                                    state of its own.
    load(spec, staged) -> Handle    RAM -> ACTIVE: a runtime built from ``staged`` (what ``stage``
                                    returned for this spec, never None; never re-staged), checked
                                    before it is returned: one greedy token (``chores.validated``)
                                    unless ``stage`` already ran one on the same weights; for a
                                    remote endpoint, that it answers.
    stream(handle, messages, sampling, emit) -> None     generate (below).
    unload(handle)                  ACTIVE -> RAM: free the runtime; ``staged`` stays valid and
                                    may be loaded again.
    unstage(staged)                 RAM -> DISK: free the host copy; the one release path. Called
                                    only when no handle loaded from it is alive.
    nbytes(spec, base) / footprint(spec, base)   bytes the RAM tier holds / bytes ACTIVE holds
                                    (weights + KV cache of every slot + buffers), known before any move.
    concurrency(spec) -> int        requests of this expert the runtime runs at once (its slots);
                                    the engine never sends more, and the backend must serve that many
                                    concurrently (``chores.declared_concurrency`` reads ``n_parallel``).
    prompt_counter(spec, base) -> PromptCounter     OPTIONAL: counts a request's prompt tokens
                                    exactly as ``stream`` does, built without loading the expert (its
                                    tokenizer only); the counter returns None where it cannot tell.
                                    The engine refuses or skips a prompt longer than the expert's
                                    ``context`` before queueing it (coserve.engine.fit). A backend
                                    without one (openai: its tokenizer is remote) is checked by
                                    ``stream``, once loaded.

Errors (coserve.errors), the only ones a backend raises on purpose:

    nbytes / footprint / stage / load   AssetError (file missing, hash differs) or ExpertLoadError
                                        (anything else: a bad file, no memory, a dead endpoint).
                                        The request falls back to the next expert; the expert backs off.
    stream                              ContextTooLong (the prompt does not fit THIS expert:
                                        ``chores.check_context``, one message): only experts with a
                                        larger context are tried, else 413 to the client.
                                        ExpertFailed (the runtime failed, timed out or was unloaded):
                                        before the first chunk the request falls back; after it, the
                                        stream ends with the error.
                                        InvalidRequest (``chores.refuse_sampling``, before anything is
                                        generated): the request asks for what this runtime cannot do
                                        (below); a 400 naming the parameter, no fallback.
    Anything else (MemoryError, RuntimeError, ...) is a defect of the backend: the pool still turns
    it into ExpertLoadError, the engine into a 500.

Streaming: ``emit`` is called with each piece of text as a Chunk; if it returns True the caller
went away and the backend stops within one token and returns without emitting again. Otherwise the
LAST chunk, and only it, carries ``finish_reason`` ("stop": end of sequence or a stop string;
"length": the cap was reached) and ``usage``: the prompt's tokens and the tokens generated (unless
a stop string cut the text, exactly the tokens whose text was streamed; a runtime that reports no
usage is counted by its streamed pieces, prompt 0). The cap is ``chores.token_cap`` (the request's
``max_tokens``, else the expert's ``options.max_tokens``, else 512); generated text never contains
one of ``sampling.stop`` (``chores.StopStrings`` where the runtime does not cut it itself).

Sampling features: a backend honours ``sampling.logprobs`` and ``sampling.presence_penalty`` /
``frequency_penalty``, or refuses them with ``chores.refuse_sampling`` (it declares there what it
can: today llamacpp-split, llamacpp, openai and fake give logprobs; transformers and vllm do not;
only transformers lacks the penalties). With ``logprobs`` every generated token whose text is
streamed has one ``TokenLogprob`` (natural log, <= 0; ``top_logprobs`` alternatives, most likely
first) on the chunk that carries its text or, when a stop string holds the text back, on a later
chunk, the last one at the latest. The registry's ``capabilities`` says the same to the routing
(coserve.backends.registry), so such a request reaches only a backend that can.

Tools and structured output (``sampling.tools``/``tool_choice``/``response_format``, the client's
JSON; coserve.backends.structured): a backend applies them or refuses them with InvalidRequest
naming ``tools`` / ``response_format`` before generating. A call the answer makes is emitted as
``Chunk.tool_calls`` deltas (the first of a call with its id and name, then its arguments), never as
text, and the last chunk's finish_reason is then ``tool_calls``.

Threads: every method is synchronous and called from the engine's worker threads, never on the
event loop. The pool makes at most one move per expert at a time, but moves of different experts
and ``stream`` calls run concurrently; up to ``concurrency(spec)`` streams run on one handle at
once. A backend knows one runtime; it knows nothing about routing, queues or budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from coserve.config import ExpertSpec
from coserve.types import Chunk, Message, Sampling

__all__ = ["Backend", "Emit", "Handle", "PromptCounter"]

# Called with each streamed chunk; returning True asks the backend to stop generating (cancel).
Emit = Callable[[Chunk], bool]

# A request's prompt tokens as the expert's ``stream`` counts them (None: it cannot tell).
PromptCounter = Callable[[tuple[Message, ...], Sampling], "int | None"]


@dataclass
class Handle:
    """A loaded (ACTIVE) expert."""

    spec: ExpertSpec
    runtime: Any  # the backend's own object (a llama.cpp context, an HTTP client, ...); None once unloaded
    info: dict[str, Any] = field(default_factory=dict)  # what the load measured (transformers: copy_s)


class Backend(Protocol):
    """Moves experts between tiers and generates with them (the contract is the module docstring)."""

    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        """Bytes of the expert's weights: what the RAM tier holds and a move copies."""
        ...

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        """Bytes the expert occupies when ACTIVE, known before loading it."""
        ...

    def concurrency(self, spec: ExpertSpec) -> int:
        """Requests of this expert its runtime runs at once (>= 1)."""
        ...

    def stage(self, spec: ExpertSpec, base: Path | None) -> Any:
        """DISK -> RAM; returns the staged object the pool passes to ``load`` and ``unstage``."""
        ...

    def load(self, spec: ExpertSpec, staged: Any) -> Handle:
        """RAM -> ACTIVE from ``staged``, checked before it is returned."""
        ...

    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        """Generate, calling ``emit`` per chunk; the last chunk carries finish_reason and usage."""
        ...

    def unload(self, handle: Handle) -> None:
        """ACTIVE -> RAM: free the runtime (the staged object stays valid)."""
        ...

    def unstage(self, staged: Any) -> None:
        """RAM -> DISK: free what ``stage`` holds."""
        ...
