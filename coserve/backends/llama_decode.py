"""The ACTIVE tier of a ``llamacpp-split`` expert: a llama.cpp context on a loaded model, and the
thread that decodes its requests (continuous batching over llama.cpp's sequences).

Each step feeds one token of every generating request plus prompt chunks of newly admitted ones
(up to one 512-token batch), samples with each request's own sampler chain, and keeps a finished
request's cells so that a later request sharing its prefix decodes only the rest. Requests beyond
the slots, or whose prompt and ``max_tokens`` do not fit beside the admitted ones' in the shared KV
cache, wait in arrival order. A request marked ``cancelled`` ends at the next step.

A request with ``top_logprobs`` >= 0 also gets, per sampled token, its log-probability under the
model's own distribution (log-softmax of the raw logits, before penalties and temperature, as
vLLM reports them) and that many most likely tokens.

It knows nothing of chat messages, stop strings or the engine: it decodes token ids.
"""

from __future__ import annotations

import collections
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coserve.backends import llama_capi
from coserve.backends.llama_memory import UBATCH
from coserve.backends.llama_model import KV_TYPES, LoadedModel
from coserve.errors import ExpertFailed, ExpertLoadError
from coserve.types import TokenLogprob

__all__ = ["BATCH", "DecodeContext", "Request"]

BATCH = UBATCH  # tokens per llama_decode call (and llama.cpp's micro-batch)


@dataclass(eq=False)
class Request:
    """One generation in the decode loop. Written by the loop thread, except ``cancelled``."""

    prompt: list[int]
    max_tokens: int
    sampler: Any
    top_logprobs: int = -1  # >= 0: put (piece, TokenLogprob) per token instead of the piece alone
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    seq: int = -1  # llama.cpp sequence id while admitted
    fed: int = 0  # prompt tokens decoded so far
    pos: int = 0  # cells this sequence holds
    last: int = 0  # the last sampled token (fed at the next step)
    generated: int = 0
    held: list[int] = field(default_factory=list)  # tokens whose KV cells the sequence holds
    reused: int = 0  # prompt tokens whose cells were kept from the slot's previous request

    @property
    def cells(self) -> int:
        """The most cells it can come to hold: its prompt and every token it may generate."""
        return len(self.prompt) + self.max_tokens


class DecodeContext:
    """The ACTIVE tier: a context on a loaded model and the thread that decodes its requests."""

    def __init__(
        self,
        model: LoadedModel,
        n_parallel: int,
        threads: int,
        kv_cache_type: str = "f16",
        seq_context: int | None = None,
        cells: int | None = None,
    ):
        """``kv_cache_type``: a key of KV_TYPES; ``seq_context``: cells one request may use (default
        the expert's context); ``cells``: of the shared KV cache (default every slot's full context)."""
        lib = llama_capi.lib()
        spec = model.spec
        params = lib.llama_context_default_params()
        # The cells of the one KV cache the slots share: by default every slot's full context.
        params.n_ctx = cells or (seq_context or spec.context) * n_parallel
        params.n_seq_max = n_parallel
        params.n_batch = params.n_ubatch = BATCH
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = KV_TYPES[kv_cache_type][0]
        if params.type_v != KV_TYPES["f16"][0]:
            params.flash_attn_type = llama_capi.FLASH_ATTN_ENABLED  # llama.cpp needs it for a quantized V
        params.no_perf = True
        # One KV cache shared by the slots (each request still capped at the expert's context):
        # batched decoding ran 20% faster than with a cache per slot (docs/serving.md).
        params.kv_unified = True
        llama_capi.last_error()  # forget earlier errors
        self.ptr = lib.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            detail = llama_capi.last_error()
            raise ExpertLoadError(f"expert {spec.name!r}: no context of {params.n_ctx} tokens: {detail}")
        model.contexts += 1
        self.model = model
        self.memory = lib.llama_get_memory(self.ptr)
        self.seq_context = seq_context or spec.context  # cells one request may use
        self.cells = int(params.n_ctx)
        self.reserved = 0  # cells the admitted requests may still come to hold (prompt + max_tokens)
        self.batch = lib.llama_batch_init(BATCH, 0, 1)
        self.free = list(range(n_parallel - 1, -1, -1))
        self.kept: dict[int, list[int]] = {}  # free sequence -> tokens its cells still hold
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.cond = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name=f"coserve-llama-{spec.name}", daemon=True)
        self.thread.start()

    # -- called from request threads --------------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self.cond:
            if self.closing:
                raise ExpertFailed(f"expert {self.model.spec.name!r} was unloaded")
            self.waiting.append(request)
            self.cond.notify()

    def cancel(self, request: Request) -> None:
        request.cancelled = True
        with self.cond:
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()
        lib = llama_capi.lib()
        lib.llama_batch_free(self.batch)
        lib.llama_free(self.ptr)
        self.ptr = None
        self.model.contexts -= 1

    # -- the decode loop (its own thread) ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.closing and not self.waiting and not self.running:
                    self.cond.wait()
                if self.closing:
                    break
                while self.waiting and self.free:
                    request = self.waiting[0]
                    if request.cancelled:  # the caller left while it waited
                        self.waiting.popleft()
                        llama_capi.lib().llama_sampler_free(request.sampler)
                        request.out.put(("end", "cancelled"))
                        continue
                    if self.reserved + request.cells > self.cells:
                        break  # the cache cannot hold it to its end: it waits for a request to end
                    self.waiting.popleft()
                    self._admit(request)
            for request in [r for r in self.running if r.cancelled]:
                self._end(request, "cancelled")
            if not self.running:
                continue
            try:
                self._step()
            except Exception as exc:  # a failed decode fails the requests in it, not the server
                for request in list(self.running):
                    self._end(request, exc)
        for request in list(self.running):
            self._end(request, ExpertFailed(f"expert {self.model.spec.name!r} was unloaded"))
        with self.cond:
            while self.waiting:
                request = self.waiting.popleft()
                llama_capi.lib().llama_sampler_free(request.sampler)
                request.out.put(("end", ExpertFailed(f"expert {self.model.spec.name!r} was unloaded")))

    def _admit(self, request: Request) -> None:
        """Give the request a free sequence and as much of its prompt as is already in the cache:
        the free sequence whose kept cells share the longest prefix with it, or, when another
        sequence (running, or kept by another slot) shares more, that one's cells — shared, not
        copied, as the slots have one KV cache. A chat template's preamble, a system prompt or an
        earlier turn is then not decoded again."""
        lib = llama_capi.lib()
        prompt = request.prompt

        def shared(tokens: list[int]) -> int:
            n = 0
            for a, b in zip(tokens, prompt, strict=False):
                if a != b:
                    break
                n += 1
            return n

        seq = max(self.free, key=lambda s: shared(self.kept.get(s, [])))
        self.free.remove(seq)
        donor, best = seq, shared(self.kept.pop(seq, []))
        others = [(r.seq, r.held) for r in self.running] + list(self.kept.items())
        for other, tokens in others:
            if (n := shared(tokens)) > best:
                donor, best = other, n
        keep = min(best, len(prompt) - 1)  # the last prompt token is decoded again: its logits
        if donor == seq:
            if not lib.llama_memory_seq_rm(self.memory, seq, keep, -1):
                lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
                keep = 0
        else:
            lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
            if keep > 0:
                lib.llama_memory_seq_cp(self.memory, donor, seq, 0, keep)
        request.seq, request.fed, request.pos, request.reused = seq, keep, keep, keep
        request.held = prompt[:keep]
        self.reserved += request.cells
        self.running.append(request)

    def _step(self) -> None:
        lib = llama_capi.lib()
        batch = self.batch
        outputs: list[tuple[Request, int]] = []
        n = 0

        def add(token: int, request: Request, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = request.pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = request.seq
            batch.logits[n] = logits
            request.held.append(token)
            if logits:
                outputs.append((request, n))
            request.pos += 1
            n += 1

        for request in self.running:  # one token of every generating request first
            if request.fed == len(request.prompt):
                add(request.last, request, True)
        for request in self.running:  # then prompt chunks, as many as the batch holds
            while request.fed < len(request.prompt) and n < BATCH:
                request.fed += 1
                add(request.prompt[request.fed - 1], request, request.fed == len(request.prompt))
        batch.n_tokens = n
        code = lib.llama_decode(self.ptr, batch)
        if code == 1 and self.kept:  # no room: give up the cells kept for prefix reuse, retry
            for seq in self.kept:
                lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
            self.kept.clear()
            code = lib.llama_decode(self.ptr, batch)
        if code != 0:
            detail = llama_capi.last_error()
            raise ExpertFailed(f"expert {self.model.spec.name!r}: llama_decode returned {code}: {detail}")
        for request, index in outputs:
            logprobs = self._logprobs(index) if request.top_logprobs >= 0 else None
            token = lib.llama_sampler_sample(request.sampler, self.ptr, index)
            if self.model.is_end(token):
                self._end(request, "stop")
                continue
            request.last = token
            request.generated += 1
            piece = self.model.piece(token)
            if logprobs is None:
                request.out.put(piece)
            else:
                request.out.put((piece, self._entry(token, piece, logprobs, request.top_logprobs)))
            if request.generated >= request.max_tokens:
                self._end(request, "length")

    def _logprobs(self, index: int) -> np.ndarray:
        """Natural-log probabilities over the vocabulary at one output of the last decode."""
        n_vocab = self.model.n_vocab
        logits = np.ctypeslib.as_array(llama_capi.lib().llama_get_logits_ith(self.ptr, index), shape=(n_vocab,))
        shifted = logits.astype(np.float64) - float(logits.max())
        result: np.ndarray = shifted - np.log(np.exp(shifted).sum())
        return result

    def _entry(self, token: int, piece: bytes, logprobs: np.ndarray, top: int) -> TokenLogprob:
        """The sampled token's entry, with the ``top`` most likely tokens, most likely first."""
        best: list[tuple[str, float, bytes]] = []
        if top > 0:
            ids = np.argpartition(-logprobs, top - 1)[:top]
            for other in sorted(ids.tolist(), key=lambda i: (-logprobs[i], i)):
                raw = self.model.piece(other)
                best.append((raw.decode("utf-8", errors="replace"), float(logprobs[other]), raw))
        return TokenLogprob(piece.decode("utf-8", errors="replace"), float(logprobs[token]), piece, tuple(best))

    def _end(self, request: Request, outcome: str | BaseException) -> None:
        lib = llama_capi.lib()
        if isinstance(outcome, BaseException):  # the cells may be half written: drop them
            lib.llama_memory_seq_rm(self.memory, request.seq, -1, -1)
        else:
            self.kept[request.seq] = request.held
        lib.llama_sampler_free(request.sampler)
        self.running.remove(request)
        self.reserved -= request.cells
        self.free.append(request.seq)
        request.out.put(("end", outcome))
