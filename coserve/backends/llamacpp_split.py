"""llama.cpp experts with the model and its context held apart (llama.cpp's C API, through
``llama-cpp-python``'s bindings).

The ``llamacpp`` backend runs llama.cpp's server, which loads a model and its context together, so
every RAM -> ACTIVE move pays for a whole model load (tensor setup, vocabulary, repacking the
weights for the CPU kernels): 0.45-1.8 s for the default experts, 8-30x the time it takes to read
their bytes. Here the tiers map onto llama.cpp's own two objects:

    RAM     the model loaded: weights in llama.cpp's buffers (read once, no mapping, already in the
            layout its CPU kernels use), tokenizer and chat template ready
    ACTIVE  a context on that model: the KV cache of every slot and the compute buffers, and the
            decode loop that batches the expert's requests

so a switch between RAM-resident experts only creates a context. The model load is DISK -> RAM,
which the engine's prefetch does while another expert runs.

The decode loop is continuous batching over llama.cpp's sequences: each step feeds one token of
every generating request plus prompt chunks of newly admitted ones (up to one 512-token batch),
samples with a per-request sampler chain, and frees a request's cells when it ends. Requests beyond
the slots wait in arrival order. A caller that stops listening (``emit`` returns True) ends its
request at the next step. The chat template is the GGUF's own (Jinja), as llama.cpp's server uses.

Options (library file): ``threads`` (default: the usable physical cores, coserve.cpus),
``n_parallel`` (slots; default 2), ``max_tokens`` (default cap, 512), ``kv_cache_type``
(``f16``, the default, or ``q8_0``: half the KV cache's memory and half the time to create a
context, at a small cost in accuracy), ``kv_cache_tokens`` (cells of the KV cache the slots share;
default ``n_parallel`` x ``context``: smaller holds less memory, and a request is admitted only
when its prompt and ``max_tokens`` fit beside the admitted ones', else it waits). Each request may
use the expert's full ``context``.
No ``n_gpu_layers``: llama.cpp places offloaded layers on the GPU when the model loads, which is
this backend's RAM tier; ``backend: llamacpp`` offloads at the RAM -> ACTIVE move instead.

Needs ``llama-cpp-python`` (compiled from source on install: ~4 minutes on 2 cores).
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import functools
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coserve.backends.base import Emit, Handle
from coserve.backends.gguf_header import kv_cache_bytes, n_vocab, read_header
from coserve.backends.llamacpp import _libc, _return_free_memory, compute_buffer_bytes, gguf_path
from coserve.backends.staging import drop_cache
from coserve.config import ExpertSpec
from coserve.cpus import usable_cores
from coserve.errors import AssetError, ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["LlamaCppSplitBackend"]

DEFAULT_MAX_TOKENS = 512
DEFAULT_N_PARALLEL = 2
BATCH = 512  # tokens per llama_decode call (and llama.cpp's micro-batch)
_VOCAB_ENTRY_BYTES = 384
# KV cache types an expert may ask for (option kv_cache_type): ggml type and bytes per value.
KV_TYPES = {"f16": (1, 2.0), "q8_0": (8, 34 / 32)}
_ERROR_LEVEL = 4  # GGML_LOG_LEVEL_ERROR
_errors: collections.deque[str] = collections.deque(maxlen=8)  # llama.cpp's last error lines
_log_callback: Any = None  # kept referenced: llama.cpp calls it from C


@functools.cache
def _llama() -> Any:
    """The bindings, initialised once, with llama.cpp's log reduced to the errors we report."""
    import llama_cpp

    global _log_callback
    _libc()  # bounds glibc's heap arenas before any runtime thread starts (docs/decisions.md)

    def log(level: int, text: bytes, user_data: Any) -> None:
        if level == _ERROR_LEVEL and text:
            _errors.append(text.decode("utf-8", errors="replace").strip())

    _log_callback = llama_cpp.llama_log_callback(log)
    llama_cpp.llama_log_set(_log_callback, None)
    llama_cpp.llama_backend_init()
    return llama_cpp


def _last_error() -> str:
    return "; ".join(e for e in _errors if e) or "no details from llama.cpp"


@functools.lru_cache(maxsize=32)
def _formatter(template: str, eos: str, bos: str) -> Any:
    """A chat template compiled once per process (a model reloaded from disk reuses it)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)


class _Model:
    """The RAM tier: a loaded llama.cpp model (no context)."""

    def __init__(self, spec: ExpertSpec, path: Path):
        lib = _llama()
        self.spec, self.path = spec, path
        params = lib.llama_model_default_params()
        # Read into llama.cpp's own buffers rather than mapped: weights its CPU kernels use in
        # another layout are then held once (a mapping would keep the file's pages as well).
        params.load_mode = lib.LLAMA_LOAD_MODE_NONE
        params.n_gpu_layers = 0  # host memory is this tier's (a GPU build would offload otherwise)
        _errors.clear()
        self.ptr = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ExpertLoadError(f"expert {spec.name!r} failed to load {path}: {_last_error()}")
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        template = lib.llama_model_chat_template(self.ptr, None)
        if not template:
            self.release(drop=False)
            raise ExpertLoadError(f"expert {spec.name!r}: {path} has no chat template")
        self.bos = self._special(lib.llama_vocab_bos(self.vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.formatter = _formatter(template.decode("utf-8"), self._special(lib.llama_vocab_eos(self.vocab)), self.bos)
        self.contexts = 0  # live contexts on this model (it is freed only with none)

    def _special(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def piece(self, token: int, special: bool = False) -> bytes:
        lib = _llama()
        buf = (ctypes.c_char * 64)()
        n = lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:  # a longer piece: -n bytes
            buf = (ctypes.c_char * -n)()
            n = lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        lib = _llama()
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            tokens = (lib.llama_token * size)()
            n = lib.llama_tokenize(self.vocab, data, len(data), tokens, size, add_special, True)
            if n >= 0:
                return list(tokens[:n])
            size = -n

    def prompt(self, messages: tuple[Message, ...]) -> list[int]:
        """Token ids of a chat through the model's own template, generation prompt added."""
        chat: Any = [{"role": m.role, "content": m.content} for m in messages]
        text = self.formatter(messages=chat).prompt
        add_bos = self.add_bos and not (self.bos and text.startswith(self.bos))
        return self.tokenize(text, add_special=add_bos)

    def release(self, drop: bool = True) -> None:
        """RAM -> DISK: free the model (and, with ``drop``, the file's pages in the page cache)."""
        if self.ptr is not None and self.contexts == 0:
            ptr, self.ptr = self.ptr, None
            _llama().llama_model_free(ptr)
            _return_free_memory()
            if drop:
                drop_cache(self.path)


@dataclass(eq=False)
class _Request:
    """One generation in the decode loop. Written by the loop thread, except ``cancelled``."""

    prompt: list[int]
    max_tokens: int
    sampler: Any
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


class _Context:
    """The ACTIVE tier: a context on a loaded model and the thread that decodes its requests."""

    def __init__(
        self, model: _Model, n_parallel: int, threads: int, seq_context: int | None = None, cells: int | None = None
    ):
        lib = _llama()
        spec = model.spec
        params = lib.llama_context_default_params()
        # The cells of the one KV cache the slots share: by default every slot's full context.
        params.n_ctx = cells or (seq_context or spec.context) * n_parallel
        params.n_seq_max = n_parallel
        params.n_batch = params.n_ubatch = BATCH
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = _kv_type(spec)[0]
        if params.type_v != KV_TYPES["f16"][0]:
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED  # llama.cpp needs it for a quantized V
        params.no_perf = True
        # One KV cache shared by the slots (each request still capped at the expert's context):
        # batched decoding ran 20% faster than with a cache per slot (docs/serving.md).
        params.kv_unified = True
        _errors.clear()
        self.ptr = lib.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ExpertLoadError(f"expert {spec.name!r}: no context of {params.n_ctx} tokens: {_last_error()}")
        model.contexts += 1
        self.model = model
        self.memory = lib.llama_get_memory(self.ptr)
        self.seq_context = seq_context or spec.context  # cells one request may use
        self.cells = int(params.n_ctx)
        self.reserved = 0  # cells the admitted requests may still come to hold (prompt + max_tokens)
        self.batch = lib.llama_batch_init(BATCH, 0, 1)
        self.free = list(range(n_parallel - 1, -1, -1))
        self.kept: dict[int, list[int]] = {}  # free sequence -> tokens its cells still hold
        self.waiting: collections.deque[_Request] = collections.deque()
        self.running: list[_Request] = []
        self.cond = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name=f"coserve-llama-{spec.name}", daemon=True)
        self.thread.start()

    # -- called from request threads --------------------------------------------------------------
    def submit(self, request: _Request) -> None:
        with self.cond:
            if self.closing:
                raise ExpertFailed(f"expert {self.model.spec.name!r} was unloaded")
            self.waiting.append(request)
            self.cond.notify()

    def cancel(self, request: _Request) -> None:
        request.cancelled = True
        with self.cond:
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()
        lib = _llama()
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
                        _llama().llama_sampler_free(request.sampler)
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
                _llama().llama_sampler_free(request.sampler)
                request.out.put(("end", ExpertFailed(f"expert {self.model.spec.name!r} was unloaded")))

    def _admit(self, request: _Request) -> None:
        """Give the request a free sequence and as much of its prompt as is already in the cache:
        the free sequence whose kept cells share the longest prefix with it, or, when another
        sequence (running, or kept by another slot) shares more, that one's cells — shared, not
        copied, as the slots have one KV cache. A chat template's preamble, a system prompt or an
        earlier turn is then not decoded again."""
        lib = _llama()
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
        lib = _llama()
        batch = self.batch
        outputs: list[tuple[_Request, int]] = []
        n = 0

        def add(token: int, request: _Request, logits: bool) -> None:
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
            raise ExpertFailed(f"expert {self.model.spec.name!r}: llama_decode returned {code}: {_last_error()}")
        for request, index in outputs:
            token = lib.llama_sampler_sample(request.sampler, self.ptr, index)
            if lib.llama_vocab_is_eog(self.model.vocab, token):
                self._end(request, "stop")
                continue
            request.last = token
            request.generated += 1
            request.out.put(self.model.piece(token))
            if request.generated >= request.max_tokens:
                self._end(request, "length")

    def _end(self, request: _Request, outcome: str | BaseException) -> None:
        lib = _llama()
        if isinstance(outcome, BaseException):  # the cells may be half written: drop them
            lib.llama_memory_seq_rm(self.memory, request.seq, -1, -1)
        else:
            self.kept[request.seq] = request.held
        lib.llama_sampler_free(request.sampler)
        self.running.remove(request)
        self.reserved -= request.cells
        self.free.append(request.seq)
        request.out.put(("end", outcome))


def _kv_type(spec: ExpertSpec) -> tuple[int, float]:
    return KV_TYPES[spec.options.get("kv_cache_type", "f16")]  # a key of KV_TYPES (checked by the library file)


def _slots(spec: ExpertSpec) -> int:
    return int(spec.options.get("n_parallel", DEFAULT_N_PARALLEL))


def _cells(spec: ExpertSpec) -> int:
    """Cells of the shared KV cache: ``kv_cache_tokens``, or every slot's full context."""
    return int(spec.options.get("kv_cache_tokens", spec.context * _slots(spec)))


def _sampler(sampling: Sampling) -> Any:
    lib = _llama()
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if sampling.temperature <= 0.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    if sampling.top_p < 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling.temperature))
    seed = lib.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
    return chain


class _Stops:
    """Cuts streamed text at the first stop string; holds back a tail that may begin one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
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
        out, self.held = self.held, ""
        return out


class LlamaCppSplitBackend:
    """RAM = a loaded llama.cpp model, ACTIVE = a context on it with its decode loop."""

    name = "llamacpp-split"

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()

    # -- sizes ------------------------------------------------------------------------------------
    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        """The loaded model: its weights and its tokenizer's tables (about 380 bytes per vocabulary
        entry, measured on the default experts: tokens, scores and merge maps)."""
        path = gguf_path(spec, base)
        if not path.is_file():
            raise AssetError(f"expert {spec.name!r}: model file missing ({path})")
        return path.stat().st_size + _VOCAB_ENTRY_BYTES * n_vocab(read_header(path))

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        """The loaded model (weights held once: repacked tensors replace their loaded copy) + f16
        KV cache of every slot + compute buffers."""
        path = gguf_path(spec, base)
        header = read_header(path)
        n_parallel = _slots(spec)
        return (
            self.nbytes(spec, base)
            + kv_cache_bytes(header, _cells(spec), _kv_type(spec)[1])
            + compute_buffer_bytes(header, n_parallel)
        )

    # -- tiers ------------------------------------------------------------------------------------
    def stage(self, spec: ExpertSpec, base: Path | None) -> _Model:
        """DISK -> RAM: load the model and check it with one greedy token in a small context."""
        path = gguf_path(spec, base)
        if not path.is_file():
            raise AssetError(f"expert {spec.name!r}: model file missing ({path})")
        model = _Model(spec, path)
        try:
            check = _Context(model, 1, self._threads(spec), seq_context=min(spec.context, BATCH))
            try:
                self._generate(check, model, (Message("user", "Hi"),), Sampling(max_tokens=1, temperature=0.0), None)
            finally:
                check.close()
        except ExpertLoadError:
            model.release()
            raise
        except Exception as exc:
            model.release()
            raise ExpertLoadError(f"expert {spec.name!r} loaded but failed its first generation: {exc}") from None
        with self._lock:
            self._models[spec.name] = model
        return model

    def unstage(self, staged: _Model) -> None:
        with self._lock:
            if self._models.get(staged.spec.name) is staged:
                del self._models[staged.spec.name]
        staged.release(drop=True)

    def load(self, spec: ExpertSpec, base: Path | None) -> Handle:
        """RAM -> ACTIVE: a context on the staged model (staged first if it is not)."""
        start = time.monotonic()
        with self._lock:
            model = self._models.get(spec.name)
        if model is None or model.ptr is None:
            model = self.stage(spec, base)
        n_parallel = _slots(spec)
        context = _Context(model, n_parallel, self._threads(spec), cells=_cells(spec))
        return Handle(
            spec,
            context,
            nbytes=self.nbytes(spec, base),
            load_seconds=time.monotonic() - start,
            info={"path": str(model.path), "n_parallel": n_parallel, "seq_context": context.seq_context},
        )

    def unload(self, handle: Handle) -> None:
        """ACTIVE -> RAM: free the context; the model stays loaded until unstaged."""
        context, handle.runtime = handle.runtime, None
        if context is not None:
            context.close()
            _return_free_memory()

    @staticmethod
    def _threads(spec: ExpertSpec) -> int:
        return int(spec.options.get("threads", usable_cores()))

    # -- generation -------------------------------------------------------------------------------
    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        context: _Context | None = handle.runtime
        if context is None:
            raise ExpertFailed(f"expert {handle.spec.name!r} was unloaded")
        self._generate(context, context.model, messages, sampling, emit)

    def _generate(
        self, context: _Context, model: _Model, messages: tuple[Message, ...], sampling: Sampling, emit: Emit | None
    ) -> None:
        spec = model.spec
        prompt = model.prompt(messages)
        if len(prompt) + 1 > context.seq_context:
            raise ContextTooLong(
                f"the prompt ({len(prompt)} tokens) exceeds the context of expert {spec.name!r} "
                f"({context.seq_context} tokens)",
                param="messages",
            )
        cap = sampling.max_tokens or int(spec.options.get("max_tokens", DEFAULT_MAX_TOKENS))
        request = _Request(prompt, max(1, min(cap, context.seq_context - len(prompt))), _sampler(sampling))
        try:
            context.submit(request)
        except ExpertFailed:
            _llama().llama_sampler_free(request.sampler)  # never admitted: the loop will not free it
            raise
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _Stops(sampling.stop)
        received = 0
        ended = False
        try:
            while True:
                try:
                    item = request.out.get(timeout=1.0)
                except queue.Empty:
                    if not context.thread.is_alive():
                        raise ExpertFailed(f"expert {spec.name!r}: its decode loop stopped") from None
                    continue
                if isinstance(item, bytes):
                    received += 1
                    text, hit = stops.feed(decoder.decode(item))
                    if emit is not None and text and emit(Chunk(text)):
                        return  # the caller went away
                    if hit:
                        if emit is not None:
                            emit(Chunk("", "stop", Usage(len(prompt), received)))
                        return
                    continue
                ended = True
                outcome = item[1]
                if isinstance(outcome, ExpertFailed):
                    raise outcome
                if isinstance(outcome, BaseException):
                    raise ExpertFailed(f"expert {spec.name!r}: {outcome!r}")
                if outcome == "cancelled":
                    return
                tail = stops.feed(decoder.decode(b"", final=True))[0] + stops.flush()
                if emit is not None:
                    if tail:
                        emit(Chunk(tail))
                    emit(Chunk("", outcome, Usage(len(prompt), received)))
                return
        finally:
            if not ended:  # stopped listening early: the loop frees its slot at the next step
                context.cancel(request)
