"""llama.cpp experts with the model and its context held apart (llama.cpp's C API, llama_capi.py).

The ``llamacpp`` backend runs llama.cpp's server, which loads a model and its context together, so
every RAM -> ACTIVE move pays for a whole model load (tensor setup, vocabulary, repacking the
weights for the CPU kernels): 0.45-1.8 s for the default experts, 8-30x the time it takes to read
their bytes. Here the tiers map onto llama.cpp's own two objects:

    RAM     the model read in: weights in llama.cpp's buffers (read once, no mapping, already in the
            layout its CPU kernels use), tokenizer and chat template ready
    ACTIVE  a context on that model: the KV cache of every slot and the compute buffers, and the
            decode loop that batches the expert's requests

so a switch between RAM-resident experts only creates a context. Reading the model is the stage
(DISK -> RAM), which the engine's prefetch does while another expert runs. The model is llama_model.py, the
context and its continuous-batching decode loop llama_decode.py; this module is the backend over
them: sizes, tiers, and one request's text (chat template in, stop strings and UTF-8 out). A caller
that stops listening (``emit`` returns True) ends its request at the next step. It honours
``logprobs``/``top_logprobs`` (computed from the logits, llama_decode.py) and the presence and
frequency penalties (llama.cpp's penalties sampler).

Options (library file): ``threads`` (default: the usable physical cores, coserve.cpus),
``n_parallel`` (slots; default 2), ``max_tokens`` (default cap, 512), ``kv_cache_type``
(``f16``, the default, or ``q8_0``: half the KV cache's memory and half the time to create a
context, at a small cost in accuracy), ``kv_cache_tokens`` (cells of the KV cache the slots share;
default ``n_parallel`` x ``context``: smaller holds less memory, and a request is admitted only
when its prompt and ``max_tokens`` fit beside the admitted ones', else it waits). Each request may
use the expert's full ``context``.
No ``n_gpu_layers``: llama.cpp places offloaded layers on the GPU when the model loads, which is
this backend's RAM tier; ``backend: llamacpp`` offloads at the RAM -> ACTIVE move instead.
"""

from __future__ import annotations

import codecs
import json
import queue
from dataclasses import replace
from pathlib import Path
from typing import Any

from coserve.backends import llama_capi
from coserve.backends.base import Emit, Handle, PromptCounter
from coserve.backends.call_stream import answer_outlet
from coserve.backends.chores import (
    StopStrings,
    check_context,
    context_too_long,
    declared_concurrency,
    fits_context,
    token_cap,
)
from coserve.backends.gguf_header import kv_cache_bytes, n_vocab, read_header
from coserve.backends.llama_decode import BATCH, DecodeContext, Request
from coserve.backends.llama_grammar import grammar_sampler
from coserve.backends.llama_memory import (
    DEFAULT_N_PARALLEL,
    compute_buffer_bytes,
    gguf_path,
    return_free_memory,
)
from coserve.backends.llama_model import KV_TYPES, LoadedModel, new_sampler, vocab_counter
from coserve.backends.structured import forced_tool_names, grammar, template_tools, tool_names
from coserve.config import ExpertSpec
from coserve.cpus import usable_cores
from coserve.errors import AssetError, ExpertFailed, ExpertLoadError, InvalidRequest
from coserve.types import Message, Sampling, Usage

__all__ = ["KV_TYPES", "LlamaCppSplitBackend"]

_VOCAB_ENTRY_BYTES = 384  # a loaded vocabulary entry: tokens, scores and merge maps (measured)


def _kv_type(spec: ExpertSpec) -> str:
    return str(spec.options.get("kv_cache_type", "f16"))  # a key of KV_TYPES (checked by the library file)


def _cells(spec: ExpertSpec) -> int:
    """Cells of the shared KV cache: ``kv_cache_tokens``, or every slot's full context."""
    return int(spec.options.get("kv_cache_tokens", spec.context * declared_concurrency(spec, DEFAULT_N_PARALLEL)))


class LlamaCppSplitBackend:
    """RAM = a loaded llama.cpp model, ACTIVE = a context on it with its decode loop."""

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
        return (
            self.nbytes(spec, base)
            + kv_cache_bytes(header, _cells(spec), KV_TYPES[_kv_type(spec)][1])
            + compute_buffer_bytes(header, self.concurrency(spec))
        )

    def concurrency(self, spec: ExpertSpec) -> int:
        return declared_concurrency(spec, DEFAULT_N_PARALLEL)

    def prompt_counter(self, spec: ExpertSpec, base: Path | None) -> PromptCounter:
        """Counts a request's prompt tokens as ``stream`` does, from the model's vocabulary alone
        (llama_model.vocab_counter); None for tools its template does not render (``stream`` refuses
        those with a 400)."""
        return vocab_counter(spec, gguf_path(spec, base))

    # -- tiers ------------------------------------------------------------------------------------
    def stage(self, spec: ExpertSpec, base: Path | None) -> LoadedModel:
        """DISK -> RAM: read the model and check it with one greedy token in a small context."""
        path = gguf_path(spec, base)
        if not path.is_file():
            raise AssetError(f"expert {spec.name!r}: model file missing ({path})")
        model = LoadedModel(spec, path)
        try:
            check = DecodeContext(model, 1, self._threads(spec), _kv_type(spec), seq_context=min(spec.context, BATCH))
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
        return model

    def unstage(self, staged: LoadedModel) -> None:
        staged.release(drop=True)

    def load(self, spec: ExpertSpec, staged: LoadedModel) -> Handle:
        """RAM -> ACTIVE: a context on the staged model (which ``stage`` checked with one token)."""
        if staged.ptr is None:
            raise ExpertLoadError(f"expert {spec.name!r}: its staged model was already unstaged")
        context = DecodeContext(staged, self.concurrency(spec), self._threads(spec), _kv_type(spec), cells=_cells(spec))
        return Handle(spec, context)

    def unload(self, handle: Handle) -> None:
        """ACTIVE -> RAM: free the context; the model stays loaded until unstaged."""
        context, handle.runtime = handle.runtime, None
        if context is not None:
            context.close()
            return_free_memory()

    @staticmethod
    def _threads(spec: ExpertSpec) -> int:
        return int(spec.options.get("threads", usable_cores()))

    # -- generation -------------------------------------------------------------------------------
    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        context: DecodeContext | None = handle.runtime
        if context is None:
            raise ExpertFailed(f"expert {handle.spec.name!r} was unloaded")
        self._generate(context, context.model, messages, sampling, emit)

    def _generate(
        self,
        context: DecodeContext,
        model: LoadedModel,
        messages: tuple[Message, ...],
        sampling: Sampling,
        emit: Emit | None,
    ) -> None:
        spec = model.spec
        names = tool_names(sampling)
        if names and not model.renders_tools:
            raise InvalidRequest(
                f"tools: the chat template of expert {spec.name!r} does not render tools",
                param="tools",
                code="unsupported_parameter",
            )
        tools = template_tools(sampling)
        prompt = model.prompt(messages, tools)
        if tools and not fits_context(spec, len(prompt), context.seq_context):
            bare = len(model.prompt(messages))  # the conversation alone: if it fits, the tools are to blame
            if fits_context(spec, bare, context.seq_context):
                raise context_too_long(spec, len(prompt), context.seq_context, tools_tokens=len(prompt) - bare)
        check_context(spec, len(prompt), context.seq_context)
        cap = token_cap(spec, sampling, len(prompt), context=context.seq_context)
        top = sampling.top_logprobs if sampling.logprobs else -1
        request = Request(prompt, cap, new_sampler(sampling, model.n_vocab, cap, _grammar(model, sampling)), top)
        try:
            context.submit(request)
        except ExpertFailed:
            llama_capi.lib().llama_sampler_free(request.sampler)  # never admitted: the loop will not free it
            raise
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopStrings(sampling.stop)
        outlet = answer_outlet(emit or (lambda chunk: False), sampling)
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
                if isinstance(item, tuple) and isinstance(item[0], bytes):  # a piece with its logprobs
                    item, entry = item
                    outlet.pending.append(entry)
                if isinstance(item, bytes):
                    received += 1
                    text, hit = stops.feed(decoder.decode(item))
                    if outlet.text(text):
                        return  # the caller went away
                    if hit:
                        outlet.end("stop", Usage(len(prompt), received))
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
                if not outlet.text(stops.feed(decoder.decode(b"", final=True))[0] + stops.flush()):
                    outlet.end(outcome, Usage(len(prompt), received))
                return
        finally:
            if not ended:  # stopped listening early: the loop frees its slot at the next step
                context.cancel(request)


def _grammar(model: LoadedModel, sampling: Sampling) -> Any:
    """The grammar sampler of a request that asks for JSON or forces a tool call, else None;
    InvalidRequest (400) naming ``response_format``, or the forced function whose ``parameters``
    do not compile (``tools[i].function.parameters``), when its schema does not compile."""
    text = grammar(sampling)
    if text is None:
        return None
    try:
        return grammar_sampler(model, text)
    except ValueError:
        if not forced_tool_names(sampling):
            message = "response_format: its JSON Schema cannot be enforced (it does not compile)"
            raise InvalidRequest(message, param="response_format") from None
        raise _uncompiled_function(model, sampling) from None


def _uncompiled_function(model: LoadedModel, sampling: Sampling) -> InvalidRequest:
    """The 400 for a forced call whose grammar does not compile, naming the first forced function
    whose call does not compile on its own (``tools`` if each does)."""
    forced = forced_tool_names(sampling)
    for i, tool in enumerate(json.loads(sampling.tools or "[]")):
        name = tool["function"]["name"]
        if name in forced:
            alone = replace(sampling, tools=json.dumps([tool]), tool_choice="required")
            try:
                llama_capi.lib().llama_sampler_free(grammar_sampler(model, grammar(alone) or ""))
            except ValueError:
                param = f"tools[{i}].function.parameters"
                why = "its JSON Schema cannot be enforced (it does not compile)"
                return InvalidRequest(f"{param}: function {name!r}: {why}", param=param)
    why = "the forced call's JSON Schema cannot be enforced (it does not compile)"
    return InvalidRequest(f"tools: {why}", param="tools")
