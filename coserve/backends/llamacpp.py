"""llama.cpp experts (GGUF on CPU) through ``xllamacpp``, llama.cpp's server as a Python library.

A prebuilt MIT wheel (installs in seconds), thread-safe, with llama.cpp's own slots and continuous
batching, and chat templates applied from the GGUF file. Its server loads model and context
together, so RAM is the file's pages (coserve.backends.staging) and every RAM -> ACTIVE move is a
whole model load from them; ``llamacpp-split`` (the default library's backend) holds them apart.
See docs/decisions.md.

Options an expert may set in the library file: ``threads`` (default: the usable physical cores,
coserve.cpus), ``n_parallel`` (slots, i.e. requests decoded together; default 2), ``max_tokens``
(default cap, 512), ``n_gpu_layers`` (layers offloaded to a GPU; the PyPI wheel is CPU-only, so it needs a CUDA build),
``prompt_cache_mib`` (host memory for llama.cpp's cache of finished prompts' KV states, reused by
later requests that share their prefix; default 0 = off, as llama.cpp's own default of 8 GiB per
expert would sit outside every budget). Each slot gets the expert's full ``context``.

``response_format`` (``json_object``, ``json_schema``) goes to llama.cpp's server, which turns the
schema into a grammar. Tools are refused (400 naming ``tools``; the routing sends them elsewhere):
its server, with or without ``--jinja``, answered the default experts' forced calls in prose.

Footprint (what the ACTIVE tier counts, known before loading, from the file's header): the
weights, llama.cpp's repacked copy of the weight types its CPU kernels interleave, the f16 KV cache
for every slot, the compute buffers and the prompt cache. For the default library it is within a
few per cent of what llama.cpp itself reports (docs/serving.md).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from coserve.backends import llama_runtime
from coserve.backends.base import Emit, Handle, PromptCounter
from coserve.backends.chores import context_too_long, declared_concurrency, validated, wire_messages
from coserve.backends.gguf_header import kv_cache_bytes, read_header
from coserve.backends.llama_memory import (
    DEFAULT_N_PARALLEL,
    compute_buffer_bytes,
    gguf_path,
    return_free_memory,
)
from coserve.backends.llama_model import vocab_counter
from coserve.backends.openai_wire import choice_logprobs, sampling_body
from coserve.backends.staging import Staged, stage, unstage
from coserve.backends.structured import tool_names
from coserve.config import ExpertSpec
from coserve.cpus import usable_cores
from coserve.errors import AssetError, ExpertFailed, ExpertLoadError, InvalidRequest
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["LlamaCppBackend"]

# ggml types llama.cpp's CPU backend copies into interleaved layouts for its matrix kernels
# (Q4_0, Q4_K, IQ4_NL); looked-up tensors (the token embedding) are not repacked.
_REPACKED_TYPES = {2, 12, 20}


def _raise_runtime_error(spec: ExpertSpec, error: dict[str, Any]) -> None:
    message = str(error.get("message", error))
    if error.get("type") == "exceed_context_size_error":
        prompt_tokens = error.get("n_prompt_tokens")
        raise context_too_long(spec, int(prompt_tokens) if prompt_tokens is not None else None)
    raise ExpertFailed(f"expert {spec.name!r}: {message}")


class LlamaCppBackend:
    """One ``xllamacpp.Server`` per loaded expert."""

    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        from coserve.assets import source_size

        size = source_size(spec, base)
        if size is None:
            raise AssetError(f"expert {spec.name!r}: model file missing ({', '.join(spec.parts)})")
        return size

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        path = gguf_path(spec, base)
        header = read_header(path)
        n_parallel = self.concurrency(spec)
        repacked = sum(
            t.nbytes
            for t in header.tensors
            if t.type in _REPACKED_TYPES and len(t.shape) == 2 and not t.name.startswith("token_embd")
        )
        kv = kv_cache_bytes(header, spec.context * n_parallel)
        compute = compute_buffer_bytes(header, n_parallel)
        prompt_cache = int(spec.options.get("prompt_cache_mib", 0)) * 2**20
        return path.stat().st_size + repacked + kv + compute + prompt_cache

    def concurrency(self, spec: ExpertSpec) -> int:
        return declared_concurrency(spec, DEFAULT_N_PARALLEL)

    def prompt_counter(self, spec: ExpertSpec, base: Path | None) -> PromptCounter:
        """Counts a request's prompt tokens as llama.cpp's server does, without loading the expert:
        ``llamacpp-split``'s counter on the same file (llama_model.vocab_counter; equal to the server's
        own count in tests/test_prompt_fit.py); None for any tools (``stream`` refuses them with a 400)."""
        return vocab_counter(spec, gguf_path(spec, base), tools=False)

    def stage(self, spec: ExpertSpec, base: Path | None) -> Staged:
        return stage(gguf_path(spec, base))

    def unstage(self, staged: Staged) -> None:
        unstage(staged)

    def load(self, spec: ExpertSpec, staged: Staged) -> Handle:
        xllamacpp = llama_runtime.xllamacpp()  # heap arenas, OpenMP's barrier wait: set before its threads start

        path = staged.path
        n_parallel = self.concurrency(spec)
        threads = int(spec.options.get("threads", usable_cores()))
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = n_parallel
        params.n_ctx = spec.context * n_parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1  # llama.cpp otherwise logs hundreds of lines per load
        params.warmup = False
        params.cache_ram_mib = int(spec.options.get("prompt_cache_mib", 0))
        params.fit_params = False  # the context asked for, not one shrunk silently to fit memory
        if "n_gpu_layers" in spec.options:  # GPU offload, where the runtime was built with CUDA
            params.n_gpu_layers = int(spec.options["n_gpu_layers"])
        try:
            server = xllamacpp.Server(params)
        except Exception as exc:  # the runtime raises plain RuntimeError on bad files
            raise ExpertLoadError(f"expert {spec.name!r} failed to load {path}: {exc}") from None
        # The first-token check also keeps xllamacpp safe: destroying a server that never handled
        # a request deadlocked in some trials here.
        return validated(self, Handle(spec, server))

    def unload(self, handle: Handle) -> None:
        handle.runtime = None  # dropping the last reference frees the model and its KV cache
        return_free_memory()

    def _body(self, spec: ExpertSpec, messages: tuple[Message, ...], sampling: Sampling) -> dict[str, Any]:
        return {"messages": wire_messages(messages), **sampling_body(spec, sampling)}

    def _server(self, handle: Handle) -> Any:
        if handle.runtime is None:
            raise ExpertFailed(f"expert {handle.spec.name!r} was unloaded")
        return handle.runtime

    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        if tool_names(sampling):
            raise InvalidRequest(
                f"tools: expert {handle.spec.name!r} (backend llamacpp) cannot call tools",
                param="tools",
                code="unsupported_parameter",
            )
        body = self._body(handle.spec, messages, sampling)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        state: dict[str, Any] = {"finish": None, "error": None, "stopped": False, "streamed": 0, "usage": None}
        lock = threading.Lock()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            # Runs on the runtime's thread; exceptions raised here would be swallowed by it,
            # so errors are recorded and re-raised after the call returns.
            with lock:
                if state["stopped"]:
                    return True
                try:
                    if "error" in chunk:
                        state["error"] = chunk["error"]
                        return True
                    for choice in chunk.get("choices", []):
                        text = (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            state["finish"] = choice["finish_reason"]
                        logprobs = choice_logprobs(choice) if sampling.logprobs else ()
                        if text or logprobs:
                            state["streamed"] += 1 if text else 0
                            if emit(Chunk(text, logprobs=logprobs)):
                                state["stopped"] = True
                                return True
                    if chunk.get("usage") is not None:
                        usage = chunk["usage"]
                        state["usage"] = Usage(
                            int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
                        )
                    return False
                except Exception as exc:
                    state["error"] = {"message": repr(exc)}
                    return True

        result = self._server(handle).handle_chat_completions(body, on_chunk)
        if isinstance(result, dict) and "error" in result:
            _raise_runtime_error(handle.spec, result["error"])
        if state["error"] is not None:
            _raise_runtime_error(handle.spec, state["error"])
        if not state["stopped"]:  # the last chunk: finish_reason and usage (counted if the runtime sent none)
            emit(Chunk("", state["finish"] or "stop", state["usage"] or Usage(0, state["streamed"])))
