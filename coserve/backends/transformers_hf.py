"""Experts run by PyTorch + transformers: the GPU backend, where the tiers are real device moves.

    DISK   -> the model file (GGUF, dequantised by transformers' reader; or a model folder with
              config.json and safetensors that the user points at)
    RAM    -> ``stage``: the weights read into host memory in the serving dtype and, on a GPU
              machine, *pinned* (page-locked) so the copy to the device runs at full PCIe/NVLink
              speed: the same place vLLM's sleep level 1 parks weights
    ACTIVE -> ``load``: a model built on the device and filled from the host copy (one
              host->device copy of the weights; vLLM's wake-up), validated with one greedy token;
              ``unload`` frees the device memory while the host copy stays staged

Generation is ``model.generate`` with a streamer (greedy at temperature 0, else sampling with
``top_p`` and an optional seed), one request at a time per expert (no continuous batching: that
is what an OpenAI-compatible vLLM server behind ``backend: openai`` is for).

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
from coserve.backends.base import Emit, Handle, validated
from coserve.backends.options import DTYPE_BYTES
from coserve.backends.sizes import model_kv_bytes
from coserve.config import ExpertSpec
from coserve.errors import ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling, Usage

__all__ = ["TransformersBackend"]

_MISSING = [name for name in ("torch", "transformers", "gguf") if importlib.util.find_spec(name) is None]
if _MISSING:  # get_backend turns this into a ConfigError at start, before any request
    raise ImportError(
        f"{', '.join(_MISSING)} not installed: pip install 'coserve[torch]' (with the torch build for your machine)"
    )

DEFAULT_MAX_TOKENS = 512


@dataclass
class _HostCopy:
    """An expert's weights in host memory (pinned on a GPU machine), ready to be copied to a device."""

    model: Any  # a transformers model on the CPU, its tensors views into ``flat``
    tokenizer: Any
    nbytes: int
    read_seconds: float
    flat: Any  # one uint8 tensor holding every parameter and buffer (pinned on GPU machines)
    layout: list[tuple[str, int, Any, tuple[int, ...], bool]]  # (name, offset, dtype, shape, is parameter)


class _Staged:
    """What ``stage`` returns: releasing it drops the host copy (RAM -> DISK)."""

    def __init__(self, backend: TransformersBackend, name: str):
        self.backend = backend
        self.name = name

    def release(self) -> None:
        self.backend._drop_host(self.name)


@dataclass
class _Runtime:
    model: Any
    tokenizer: Any
    device: str
    lock: threading.Lock


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

    name = "transformers"

    def __init__(self) -> None:
        self._host: dict[str, _HostCopy] = {}
        self._tokenizers: dict[str, Any] = {}  # by model path: building one from a GGUF file takes seconds
        self._skeletons: dict[str, Any] = {}  # expert -> its device model with the weights released (meta)
        self._lock = threading.Lock()

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

    def _read(self, spec: ExpertSpec, base: Path | None) -> _HostCopy:
        """DISK -> host memory: read and dequantise the weights, pinned when a GPU will take them."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per GGUF read otherwise, on the server's stderr
        path = model_path(spec, base)
        device = _device(spec)
        dtype = getattr(torch, _dtype_name(spec, device))
        start = time.monotonic()
        try:
            if path.is_dir():
                where, extra = str(path), {}
            else:  # a GGUF file: transformers reads it (and its tokenizer) and dequantises
                where, extra = str(path.parent), {"gguf_file": path.name}
            tokenizer = self._tokenizers.get(str(path))
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **extra)
                with self._lock:
                    self._tokenizers[str(path)] = tokenizer
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=True, **extra)
        except Exception as exc:  # transformers raises OSError/ValueError/... on bad or foreign files
            raise ExpertLoadError(f"expert {spec.name!r} failed to load {path}: {exc}") from None
        model.eval()
        flat, layout = _pack(model, pin=device.startswith("cuda"))
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return _HostCopy(model, tokenizer, nbytes, time.monotonic() - start, flat, layout)

    def stage(self, spec: ExpertSpec, base: Path | None) -> _Staged:
        copy = self._read(spec, base)
        with self._lock:
            self._host[spec.name] = copy
        return _Staged(self, spec.name)

    def unstage(self, staged: _Staged) -> None:
        staged.release()

    def _drop_host(self, name: str) -> None:
        with self._lock:
            self._host.pop(name, None)
        gc.collect()

    def load(self, spec: ExpertSpec, base: Path | None) -> Handle:
        import torch

        start = time.monotonic()
        device = _device(spec)
        with self._lock:
            host = self._host.get(spec.name)
        from_ram = host is not None
        if host is None:
            host = self._read(spec, base)  # DISK -> ACTIVE: a transient host copy
        copy_start = time.monotonic()
        if device == "cpu":
            model = host.model  # the host copy is the runtime: nothing to move
        else:
            with self._lock:
                skeleton = self._skeletons.pop(spec.name, None)
            try:
                model = _to_device(spec, host, device, skeleton)
            except torch.cuda.OutOfMemoryError:
                raise MemoryError(f"expert {spec.name!r}: not enough device memory on {device}") from None
        copy_seconds = time.monotonic() - copy_start
        runtime = _Runtime(model, host.tokenizer, device, threading.Lock())
        handle = Handle(
            spec,
            runtime,
            nbytes=host.nbytes,
            load_seconds=0.0,
            info={"device": device, "dtype": str(host.model.dtype), "from_ram": from_ram, "copy_s": copy_seconds},
        )

        return validated(self, handle, start)  # one greedy token before anyone is released to it

    def unload(self, handle: Handle) -> None:
        runtime = handle.runtime
        handle.runtime = None
        if runtime is not None and runtime.device != "cpu":
            import torch

            # Keep the module tree, drop the device memory: the next load only copies the weights
            # back (vLLM's sleep/wake keeps its model object the same way).
            with runtime.lock:
                _release_device(runtime.model)
            with self._lock:
                self._skeletons[handle.spec.name] = runtime.model
            del runtime
            gc.collect()
            torch.cuda.empty_cache()

    # -- generation ---------------------------------------------------------------------------
    def stream(self, handle: Handle, messages: tuple[Message, ...], sampling: Sampling, emit: Emit) -> None:
        import torch
        from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        runtime: _Runtime | None = handle.runtime
        if runtime is None:
            raise ExpertFailed(f"expert {handle.spec.name!r} was unloaded")
        spec = handle.spec
        tokenizer = runtime.tokenizer
        chat = [{"role": m.role, "content": m.content} for m in messages]
        try:
            ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        except Exception as exc:
            raise ExpertFailed(f"expert {spec.name!r}: its chat template failed: {exc}") from None
        input_ids = ids["input_ids"]
        n_prompt = int(input_ids.shape[1])
        if n_prompt >= spec.context:
            raise ContextTooLong(
                f"the prompt ({n_prompt} tokens) exceeds the context of expert {spec.name!r} ({spec.context} tokens)",
                param="messages",
            )
        cap = sampling.max_tokens or int(spec.options.get("max_tokens", DEFAULT_MAX_TOKENS))
        cap = max(1, min(cap, spec.context - n_prompt))
        state: dict[str, Any] = {"stopped": False, "finish": None, "generated": 0}
        produced: list[int] = []
        sent = [0]  # characters of the decoded text already emitted

        def flush(final: bool) -> None:
            text = tokenizer.decode(produced, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if not final and text.endswith("\ufffd"):
                return  # half of a multi-byte character: wait for the rest
            for stop in sampling.stop:
                at = text.find(stop, max(0, sent[0] - len(stop)))
                if at >= 0:
                    text = text[:at]
                    state["finish"] = "stop"
                    state["stopped"] = True
            if len(text) > sent[0]:
                piece, sent[0] = text[sent[0] :], len(text)
                if emit(Chunk(piece)):
                    state["stopped"] = True
                    state["finish"] = "cancelled"

        class _Streamer(BaseStreamer):
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first echoes the prompt
                    self.prompt_seen = True
                    return
                if state["stopped"]:
                    return
                produced.extend(int(t) for t in value.reshape(-1).tolist())
                state["generated"] = len(produced)
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
                        input_ids=input_ids.to(runtime.device),
                        attention_mask=ids["attention_mask"].to(runtime.device),
                        streamer=_Streamer(),
                        stopping_criteria=StoppingCriteriaList([_Stop()]),
                        **kwargs,
                    )
            except torch.cuda.OutOfMemoryError:
                raise ExpertFailed(f"expert {spec.name!r}: out of device memory while generating") from None
            except Exception as exc:
                raise ExpertFailed(f"expert {spec.name!r}: generation failed: {exc}") from None
        if state["finish"] == "cancelled":
            return
        n_out = int(out.shape[1]) - n_prompt
        finish = state["finish"] or ("length" if n_out >= cap and not _ended(out, tokenizer, runtime.model) else "stop")
        emit(Chunk("", finish, Usage(n_prompt, state["generated"])))


_ALIGN = 256  # bytes: every tensor of the flat buffer starts on this boundary


def _entries(model: Any) -> list[tuple[str, Any, bool]]:
    """(name, tensor, is parameter) of every parameter and buffer, tied names included."""
    params = [(n, t, True) for n, t in model.named_parameters(remove_duplicate=False)]
    return params + [(n, t, False) for n, t in model.named_buffers(remove_duplicate=False)]


def _pack(model: Any, pin: bool) -> tuple[Any, list[tuple[str, int, Any, tuple[int, ...], bool]]]:
    """Move every tensor of ``model`` into one flat uint8 host buffer (pinned if asked) and make the
    model use views of it. Tied tensors share one offset. Returns (buffer, layout)."""
    import torch

    offsets: dict[int, int] = {}
    layout: list[tuple[str, int, Any, tuple[int, ...], bool]] = []
    total = 0
    for name, tensor, is_param in _entries(model):
        key = tensor.data_ptr()
        if key not in offsets:
            offsets[key] = total
            total += -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN
        layout.append((name, offsets[key], tensor.dtype, tuple(tensor.shape), is_param))
    flat = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    views: dict[int, Any] = {}
    with torch.no_grad():
        for (_name, offset, dtype, shape, _), (_, tensor, _) in zip(layout, _entries(model), strict=True):
            if offset not in views:
                size = tensor.numel() * tensor.element_size()
                views[offset] = flat[offset : offset + size].view(dtype).view(shape)
                views[offset].copy_(tensor)
            tensor.data = views[offset]
    return flat, layout


def _set(model: Any, name: str, tensor: Any, is_param: bool) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    (module._parameters if is_param else module._buffers)[leaf] = tensor


def _to_device(spec: ExpertSpec, host: _HostCopy, device: str, skeleton: Any = None) -> Any:
    """A device model filled from the host copy: ONE allocation and ONE asynchronous copy of the
    flat (pinned) buffer, then every parameter and buffer made a view of it. ``skeleton`` is the
    module tree kept from an earlier unload (built on the meta device otherwise: no weight init)."""
    import torch
    from transformers import AutoModelForCausalLM

    if skeleton is None:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(host.model.config, dtype=host.model.dtype)
        skeleton.eval()
    model = skeleton
    flat = torch.empty(host.flat.numel(), dtype=torch.uint8, device=device)
    flat.copy_(host.flat, non_blocking=True)
    made: dict[int, Any] = {}
    for name, offset, dtype, shape, is_param in host.layout:
        if offset not in made:
            size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            view = flat[offset : offset + size].view(dtype).view(shape)
            made[offset] = torch.nn.Parameter(view, requires_grad=False) if is_param else view
        _set(model, name, made[offset], is_param)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    left = [n for n, t, _ in _entries(model) if t.is_meta]
    _check_filled(spec, model, left, [])
    return model


def _release_device(model: Any) -> None:
    """Point every parameter and buffer back at the meta device, freeing the device memory."""
    import torch

    made: dict[int, Any] = {}
    for name, tensor, is_param in _entries(model):
        key = id(tensor)
        if key not in made:
            meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
            made[key] = torch.nn.Parameter(meta, requires_grad=False) if is_param else meta
        _set(model, name, made[key], is_param)


def _check_filled(spec: ExpertSpec, model: Any, missing: list[str], unexpected: list[str]) -> None:
    """Every device parameter came from the host copy (a missing one is fine only if tied to a filled one)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    filled = {params[n].data_ptr() for n in params if n not in missing}
    unfilled = [n for n in missing if n in params and params[n].data_ptr() not in filled]
    if unexpected or unfilled:
        raise ExpertLoadError(
            f"expert {spec.name!r}: the device model does not match its weights (missing {unfilled[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


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
