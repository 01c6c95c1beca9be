"""The RAM tier of a ``llamacpp-split`` expert: a llama.cpp model loaded without a context, with its
tokenizer and chat template; and the sampler chain a request decodes with.

It knows nothing of contexts, slots or the decode loop (llama_decode.py).
"""

from __future__ import annotations

import ctypes
import itertools
from pathlib import Path
from typing import Any

from coserve.backends import llama_capi
from coserve.backends.base import PromptCounter
from coserve.backends.chat_template import chat_template
from coserve.backends.llama_memory import return_free_memory
from coserve.backends.staging import drop_cache
from coserve.backends.structured import renders_tool_calls, template_message, template_tools, tool_names
from coserve.config import ExpertSpec
from coserve.errors import AssetError, ExpertLoadError
from coserve.types import Message, Sampling

__all__ = ["KV_TYPES", "LoadedModel", "new_sampler", "vocab_counter"]

_serials = itertools.count(1)  # tells apart two models loaded at the same address in turn

# KV cache types an expert may ask for (option kv_cache_type): ggml type and bytes per value.
KV_TYPES = {"f16": (1, 2.0), "q8_0": (8, 34 / 32)}


class LoadedModel:
    """The RAM tier: a loaded llama.cpp model (no context); with ``vocab_only``, its tokenizer and
    chat template alone (no weights: what counts a prompt's tokens before the expert loads)."""

    def __init__(self, spec: ExpertSpec, path: Path, *, vocab_only: bool = False):
        lib = llama_capi.lib()
        self.spec, self.path = spec, path
        params = lib.llama_model_default_params()
        # Read into llama.cpp's own buffers rather than mapped: weights its CPU kernels use in
        # another layout are then held once (a mapping would keep the file's pages as well).
        params.load_mode = llama_capi.LOAD_MODE_NONE
        params.n_gpu_layers = 0  # host memory is this tier's (a GPU build would offload otherwise)
        params.vocab_only = vocab_only
        llama_capi.last_error()  # forget earlier errors
        self.ptr: int | None = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ExpertLoadError(f"expert {spec.name!r} failed to load {path}: {llama_capi.last_error()}")
        self.contexts = 0  # live contexts on this model (it is freed only with none)
        self.serial = next(_serials)
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        source = lib.llama_model_chat_template(self.ptr, None)
        if not source:
            self.release(drop=False)
            raise ExpertLoadError(f"expert {spec.name!r}: {path} has no chat template")
        self.bos = self._special(lib.llama_vocab_bos(self.vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        eos = self._special(lib.llama_vocab_eos(self.vocab))
        self.renders_tools = renders_tool_calls(source.decode("utf-8"))  # the ``tools`` capability
        try:
            self.template = chat_template(source.decode("utf-8"), self.bos, eos)
        except Exception as exc:  # a template jinja2 cannot compile
            self.release(drop=False)
            raise ExpertLoadError(f"expert {spec.name!r}: {path} has a chat template jinja2 refuses: {exc}") from None

    def _special(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (special tokens rendered only with ``special``)."""
        lib = llama_capi.lib()
        buf = ctypes.create_string_buffer(64)
        n = lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:  # a longer piece: -n bytes
            buf = ctypes.create_string_buffer(-n)
            n = lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        """Token ids of ``text``; special tokens written in it are parsed as such."""
        lib = llama_capi.lib()
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            tokens = (llama_capi.Token * size)()
            n = lib.llama_tokenize(self.vocab, data, len(data), tokens, size, add_special, True)
            if n >= 0:
                return list(tokens[:n])
            size = -n

    def prompt(self, messages: tuple[Message, ...], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Token ids of a chat (and the request's tools) through the model's own template,
        generation prompt added."""
        text = self.template.render([template_message(m) for m in messages], tools=tools)
        add_bos = self.add_bos and not (self.bos and text.startswith(self.bos))
        return self.tokenize(text, add_special=add_bos)

    def is_end(self, token: int) -> bool:
        """Whether the token ends a generation (end of turn or of text)."""
        return bool(llama_capi.lib().llama_vocab_is_eog(self.vocab, token))

    def release(self, drop: bool = True) -> None:
        """RAM -> DISK: free the model (and, with ``drop``, the file's pages in the page cache)."""
        if self.ptr is not None and self.contexts == 0:
            ptr, self.ptr = self.ptr, None
            llama_capi.lib().llama_model_free(ptr)
            return_free_memory()
            if drop:
                drop_cache(self.path)


def new_sampler(sampling: Sampling, n_vocab: int = 0, generated: int = 0, grammar: Any = None) -> Any:
    """A llama.cpp sampler chain for one request (freed by llama_sampler_free): the ``grammar``
    sampler first when there is one (coserve.backends.llama_grammar; the chain owns it), OpenAI's presence
    and frequency penalties over the last ``generated`` sampled tokens (the request's cap: its whole
    answer) when either is nonzero, then greedy at temperature 0, else top-p, temperature and a draw
    seeded by ``sampling.seed``."""
    lib = llama_capi.lib()
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if grammar is not None:
        lib.llama_sampler_chain_add(chain, grammar)
    if sampling.presence_penalty or sampling.frequency_penalty:
        penalties = lib.llama_sampler_init_penalties(
            n_vocab, max(generated, 1), 1.0, sampling.frequency_penalty, sampling.presence_penalty
        )
        lib.llama_sampler_chain_add(chain, penalties)
    if sampling.temperature <= 0.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    if sampling.top_p < 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling.temperature))
    seed = llama_capi.DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
    return chain


def vocab_counter(spec: ExpertSpec, path: Path, tools: bool = True) -> PromptCounter:
    """Counts a request's prompt tokens as llama.cpp does for this GGUF file (its chat template, the
    request's tools, its tokenizer) from the model's vocabulary alone (``vocab_only``: no weights;
    0.3-0.9 s and 10-50 MiB for the default experts). The counter gives None for tools the template
    does not render, or for any tools where ``tools`` is False (a backend that refuses them with a 400)."""
    if not path.is_file():
        raise AssetError(f"expert {spec.name!r}: model file missing ({path})")
    model = LoadedModel(spec, path, vocab_only=True)

    def count(messages: tuple[Message, ...], sampling: Sampling) -> int | None:
        if tool_names(sampling) and not (tools and model.renders_tools):
            return None
        return len(model.prompt(messages, template_tools(sampling)))

    return count
