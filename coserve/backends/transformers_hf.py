"""Experts run by PyTorch + transformers: the GPU backend, where the tiers are real device moves.

    DISK   -> the model file (GGUF, dequantised by transformers' reader; or a model folder with
              config.json and safetensors that the user points at)
    RAM    -> ``stage``: the weights read into host memory in the serving dtype and, on a GPU
              machine, *pinned* (page-locked) so the copy to the device runs at full PCIe/NVLink
              speed: the same place vLLM's sleep level 1 parks weights. The staged object is
              that host copy (coserve.backends.transformers_weights).
    ACTIVE -> ``load``: a model built on the device and filled from the host copy (one
              host->device copy of the weights; vLLM's wake-up), validated with one greedy token;
              ``unload`` frees the device memory while the host copy stays staged (and keeps the
              device module tree in it for the next load)

Generation is ``model.generate`` with a streamer (greedy at temperature 0, else sampling with
``top_p`` and an optional seed), one request at a time per expert: its declared concurrency is
1 whatever ``n_parallel`` says (no continuous batching: that is what vLLM is for). The prompt is the
chat template's tokens (coserve.backends.hf_tokenizer), and ``prompt_counter`` counts them from the
tokenizer alone, so a prompt too long for the context is refused before the weights are read.

Options an expert may set: ``device`` (default ``cuda`` when PyTorch sees a GPU, else ``cpu``),
``dtype`` (``bfloat16``, ``float16`` or ``float32``; default bfloat16 on a GPU, float32 on CPU),
``max_tokens`` (default cap, 512). Needs the optional extra ``coserve[torch]`` (torch,
transformers, accelerate, gguf); without it a library naming this backend is refused at start.
"""

from __future__ import annotations

import gc
import importlib.util
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coserve.assets import model_path
from coserve.backends.base import Emit, Handle, PromptCounter
from coserve.backends.chores import StopStrings, check_context, refuse_sampling, token_cap, validated
from coserve.backends.hf_tokenizer import Tokenizers, prompt_ids, template_counter
from coserve.backends.options import DTYPE_BYTES
from coserve.backends.sizes import model_kv_bytes
from coserve.backends.transformers_weights import Layout, pack, release_device, to_device
from coserve.config import ExpertSpec
from coserve.errors import AssetError, ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["TransformersBackend"]

_MISSING = [name for name in ("torch", "transformers", "gguf") if importlib.util.find_spec(name) is None]
if _MISSING:  # get_backend turns this into a ConfigError at start, before any request
    raise ImportError(
        f"{', '.join(_MISSING)} not installed: pip install 'coserve[torch]' (with the torch build for your machine)"
    )


@dataclass
class _HostCopy:
    """The RAM tier: an expert's weights in host memory (pinned on a GPU machine)."""

    model: Any  # a transformers model on the CPU, its tensors views into ``flat``
    tokenizer: Any
    device: str  # where ``load`` puts the runtime
    flat: Any  # one uint8 tensor holding every parameter and buffer (pinned on GPU machines)
    layout: Layout
    skeleton: Any = None  # the device module tree kept from the last unload (its weights on meta)


@dataclass
class _Runtime:
    model: Any
    host: _HostCopy
    lock: threading.Lock  # one generation at a time


def _device(spec: ExpertSpec) -> str:
    import torch

    wanted = spec.options.get("device")
    if wanted is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    wanted = str(wanted)
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ExpertLoadError(f"expert {spec.name!r}: device {wanted!r} asked for, but PyTorch sees no GPU")
    return wanted


def _dtype_name(spec: ExpertSpec, device: str) -> str:
    # one of DTYPE_BYTES (checked by the library file)
    return str(spec.options.get("dtype", "bfloat16" if device.startswith("cuda") else "float32"))


class TransformersBackend:
    """Host copies per staged expert; one device model per loaded expert."""

    def __init__(self) -> None:
        self._tokenizers = Tokenizers()  # one per model file: ``stage``'s and the prompt counter's

    # -- sizes and tiers --------------------------------------------------------------------
    def nbytes(self, spec: ExpertSpec, base: Path | None) -> int:
        """Weights in the serving dtype (a GGUF file is dequantised, so its size on disk is smaller)."""
        device = str(spec.options.get("device", "cuda" if _cuda_available() else "cpu"))
        return int(spec.params_b * 1e9 * DTYPE_BYTES.get(_dtype_name(spec, device), 4))

    def footprint(self, spec: ExpertSpec, base: Path | None) -> int:
        """Weights plus a KV cache for one sequence of the expert's full context (one request at a
        time per expert), in the serving dtype."""
        device = str(spec.options.get("device", "cuda" if _cuda_available() else "cpu"))
        width = DTYPE_BYTES.get(_dtype_name(spec, device), 4)
        return self.nbytes(spec, base) + model_kv_bytes(model_path(spec, base), spec.context, width)

    def concurrency(self, spec: ExpertSpec) -> int:
        return 1  # model.generate runs one request at a time

    def prompt_counter(self, spec: ExpertSpec, base: Path | None) -> PromptCounter:
        """Counts a request's prompt tokens as ``stream`` does, from the expert's tokenizer and chat
        template alone (no weights; the tokenizer ``stage`` then uses: coserve.backends.hf_tokenizer)."""
        path = model_path(spec, base)
        if not path.exists():
            raise AssetError(f"expert {spec.name!r}: model file missing ({path})")
        return template_counter(self._tokenizers.get(path))

    def stage(self, spec: ExpertSpec, base: Path | None) -> _HostCopy:
        """DISK -> RAM: read and dequantise the weights, pinned when a GPU will take them."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per GGUF read otherwise, on the server's stderr
        path = model_path(spec, base)
        device = _device(spec)
        dtype = getattr(torch, _dtype_name(spec, device))
        try:
            if path.is_dir():
                where, extra = str(path), {}
            else:  # a GGUF file: transformers reads it (and its tokenizer) and dequantises
                where, extra = str(path.parent), {"gguf_file": path.name}
            tokenizer = self._tokenizers.get(path)
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=True, **extra)
            model.eval()
            flat, layout = pack(model, pin=device.startswith("cuda"))
        except Exception as exc:  # transformers raises OSError/ValueError/... on bad or foreign files
            raise ExpertLoadError(f"expert {spec.name!r} failed to load {path}: {exc}") from None
        return _HostCopy(model, tokenizer, device, flat, layout)

    def unstage(self, staged: _HostCopy) -> None:
        staged.model = staged.flat = staged.skeleton = None
        gc.collect()

    def load(self, spec: ExpertSpec, staged: _HostCopy) -> Handle:
        """RAM -> ACTIVE: on CPU the host copy is the runtime; on a GPU one copy of the flat buffer."""
        import torch

        start = time.monotonic()
        if staged.device == "cpu":
            model = staged.model  # nothing to move
        else:
            skeleton, staged.skeleton = staged.skeleton, None
            try:
                model = to_device(spec, staged.model, staged.flat, staged.layout, staged.device, skeleton)
            except torch.cuda.OutOfMemoryError:
                raise ExpertLoadError(f"expert {spec.name!r}: not enough device memory on {staged.device}") from None
        copy_s = time.monotonic() - start  # seconds: the host -> device copy (scripts/gpu_check.py reads it)
        return validated(self, Handle(spec, _Runtime(model, staged, threading.Lock()), {"copy_s": copy_s}))

    def unload(self, handle: Handle) -> None:
        runtime: _Runtime | None = handle.runtime
        handle.runtime = None
        if runtime is not None and runtime.host.device != "cpu":
            import torch

            # Keep the module tree, drop the device memory: the next load only copies the weights
            # back (vLLM's sleep/wake keeps its model object the same way).
            with runtime.lock:
                release_device(runtime.model)
            runtime.host.skeleton = runtime.model
            del runtime
            gc.collect()
            torch.cuda.empty_cache()

    # -- generation ---------------------------------------------------------------------------
    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        import torch
        from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        runtime: _Runtime | None = handle.runtime
        spec = handle.spec
        if runtime is None:
            raise ExpertFailed(f"expert {spec.name!r} was unloaded")
        tokenizer, device = runtime.host.tokenizer, runtime.host.device
        try:
            input_ids = torch.tensor([prompt_ids(tokenizer, messages)], dtype=torch.long)
        except Exception as exc:
            raise ExpertFailed(f"expert {spec.name!r}: its chat template failed: {exc}") from None
        n_prompt = int(input_ids.shape[1])
        check_context(spec, n_prompt)
        refuse_sampling(spec, sampling, logprobs=False, penalties=False)  # not implemented here
        cap = token_cap(spec, sampling, n_prompt)
        stops = StopStrings(sampling.stop)
        state: dict[str, Any] = {"stopped": False, "finish": None, "cancelled": False}
        produced: list[int] = []
        decoded = [0]  # characters of the decoded text already fed to ``stops``

        def flush(final: bool) -> None:
            text = tokenizer.decode(produced, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if not final and text.endswith("\ufffd"):
                return  # half of a multi-byte character: wait for the rest
            piece, hit = stops.feed(text[decoded[0] :])
            decoded[0] = len(text)
            if final and not hit:
                piece += stops.flush()
            if hit:
                state["stopped"], state["finish"] = True, "stop"
            if piece and emit(Chunk(piece)):
                state["stopped"] = state["cancelled"] = True

        class _Streamer(BaseStreamer):
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first echoes the prompt
                    self.prompt_seen = True
                    return
                if state["stopped"]:
                    return
                produced.extend(int(t) for t in value.reshape(-1).tolist())
                flush(final=False)

            def end(self) -> None:
                if not state["stopped"]:
                    flush(final=True)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],), bool(state["stopped"]), dtype=torch.bool, device=input_ids.device
                )

        kwargs: dict[str, Any] = {
            "max_new_tokens": cap,
            "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
        }
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with runtime.lock:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            try:
                with torch.inference_mode():
                    out = runtime.model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=torch.ones_like(input_ids).to(device),
                        streamer=_Streamer(),
                        stopping_criteria=StoppingCriteriaList([_Stop()]),
                        **kwargs,
                    )
            except torch.cuda.OutOfMemoryError:
                raise ExpertFailed(f"expert {spec.name!r}: out of device memory while generating") from None
            except Exception as exc:
                raise ExpertFailed(f"expert {spec.name!r}: generation failed: {exc}") from None
        if state["cancelled"]:
            return
        n_out = int(out.shape[1]) - n_prompt
        finish = state["finish"] or ("length" if n_out >= cap and not _ended(out, tokenizer, runtime.model) else "stop")
        emit(Chunk("", finish, Usage(n_prompt, len(produced))))


def _ended(out: Any, tokenizer: Any, model: Any) -> bool:
    """Whether the last generated token is an end-of-sequence token."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return int(out[0, -1]) in eos_ids


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
