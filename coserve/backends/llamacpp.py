"""llama.cpp experts (GGUF on CPU) through ``xllamacpp``, llama.cpp's server as a Python library.

Why xllamacpp and not llama-cpp-python: a prebuilt MIT wheel (installs in seconds; llama-cpp-python
compiles for ~5 minutes here), thread-safe, with llama.cpp's own slots and continuous batching, and
chat templates applied from the GGUF file. See docs/decisions.md.

Options an expert may set in the library file: ``threads`` (default: all cores), ``n_parallel``
(slots, i.e. requests decoded together; default 2), ``max_tokens`` (default cap, 512),
``n_gpu_layers`` (layers offloaded to a GPU; the PyPI wheel is CPU-only, so it needs a CUDA build).
Each slot gets the expert's full ``context``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
import time
from pathlib import Path
from typing import Any

from coserve.assets import model_path
from coserve.backends.base import Emit, Handle
from coserve.backends.staging import Staged, stage
from coserve.config import ExpertSpec
from coserve.errors import AssetError, ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["LlamaCppBackend"]

DEFAULT_MAX_TOKENS = 512


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if hasattr(libc, "mallopt"):
        # glibc gives each new thread its own heap arena, up to 8 per core; every load starts
        # fresh runtime threads, so arenas (and resident memory) step up over load/unload cycles.
        libc.mallopt(-8, int(os.environ.get("COSERVE_MALLOC_ARENAS", "2")))  # M_ARENA_MAX
    return libc


def _return_free_memory() -> None:
    """Give the heap pages an unloaded runtime freed back to the OS (glibc's malloc_trim): without
    it, freed arenas stay in the process and resident memory creeps up over load/unload cycles."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _raise_runtime_error(spec: ExpertSpec, error: dict[str, Any]) -> None:
    message = str(error.get("message", error))
    if error.get("type") == "exceed_context_size_error":
        raise ContextTooLong(
            f"the prompt ({error.get('n_prompt_tokens')} tokens) exceeds the context of expert "
            f"{spec.name!r} ({spec.context} tokens)",
            param="messages",
        )
    raise ExpertFailed(f"expert {spec.name!r}: {message}")


class LlamaCppBackend:
    """One ``xllamacpp.Server`` per loaded expert."""

    name = "llamacpp"

    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        from coserve.assets import source_size

        size = source_size(spec, base)
        if size is None:
            raise AssetError(f"expert {spec.name!r}: model file missing ({', '.join(spec.parts)})")
        return size

    def stage(self, spec: ExpertSpec, base: Path | None) -> Staged:
        return stage(model_path(spec, base))

    def unstage(self, staged: Staged) -> None:
        staged.release(drop=True)

    def load(self, spec: ExpertSpec, base: Path | None) -> Handle:
        import xllamacpp

        _libc()  # bounds the heap arenas before the runtime's threads start

        path = model_path(spec, base)
        start = time.monotonic()
        n_parallel = int(spec.options.get("n_parallel", 2))
        threads = int(spec.options.get("threads", os.cpu_count() or 2))
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = n_parallel
        params.n_ctx = spec.context * n_parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1  # llama.cpp otherwise logs hundreds of lines per load
        params.warmup = False
        if "n_gpu_layers" in spec.options:  # GPU offload, where the runtime was built with CUDA
            params.n_gpu_layers = int(spec.options["n_gpu_layers"])
        try:
            server = xllamacpp.Server(params)
        except Exception as exc:  # the runtime raises plain RuntimeError on bad files
            raise ExpertLoadError(f"expert {spec.name!r} failed to load {path}: {exc}") from None
        # Validate before the pool releases anyone for this expert: one greedy token through the
        # chat template. (It also keeps xllamacpp safe: destroying a server that never handled
        # a request deadlocked in some trials here.)
        check = server.handle_chat_completions(
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0.0}
        )
        if "error" in check or not check.get("choices"):
            del server
            raise ExpertLoadError(f"expert {spec.name!r} loaded but failed its first generation: {check}")
        return Handle(
            spec,
            server,
            nbytes=path.stat().st_size,
            load_seconds=time.monotonic() - start,
            info={"path": str(path), "threads": threads, "n_parallel": n_parallel},
        )

    def unload(self, handle: Handle) -> None:
        handle.runtime = None  # dropping the last reference frees the model and its KV cache
        _return_free_memory()

    def _body(self, spec: ExpertSpec, messages: tuple[Message, ...], sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": sampling.max_tokens or int(spec.options.get("max_tokens", DEFAULT_MAX_TOKENS)),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        return body

    def _server(self, handle: Handle) -> Any:
        if handle.runtime is None:
            raise ExpertFailed(f"expert {handle.spec.name!r} was unloaded")
        return handle.runtime

    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        body = self._body(handle.spec, messages, sampling)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        state: dict[str, Any] = {"finish": None, "error": None, "stopped": False}
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
                        text = (choice.get("delta") or {}).get("content")
                        if choice.get("finish_reason"):
                            state["finish"] = choice["finish_reason"]
                        if text and emit(Chunk(text)):
                            state["stopped"] = True
                            return True
                    if chunk.get("usage") is not None:
                        usage = chunk["usage"]
                        emit(
                            Chunk(
                                "",
                                state["finish"] or "stop",
                                Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
                            )
                        )
                        state["finish"] = "sent"
                    return False
                except Exception as exc:
                    state["error"] = {"message": repr(exc)}
                    return True

        result = self._server(handle).handle_chat_completions(body, on_chunk)
        if isinstance(result, dict) and "error" in result:
            _raise_runtime_error(handle.spec, result["error"])
        if state["error"] is not None:
            _raise_runtime_error(handle.spec, state["error"])
        if not state["stopped"] and state["finish"] != "sent":
            emit(Chunk("", state["finish"] or "stop", None))
