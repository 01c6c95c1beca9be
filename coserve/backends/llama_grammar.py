"""Grammar samplers for ``llamacpp-split``: llguidance (inside the llama.cpp that xllamacpp
links) keeping a decode to a grammar, as llama.cpp's JSON-Schema converter writes them.

``llama_sampler_init_llg`` builds llguidance's tokenizer for a vocabulary (about 1 s for the default
experts') and caches it in one unguarded static slot keyed by the vocabulary's address alone. So
one sampler is made at a time (a lock), and when a model loaded since sits at the address of the
one the slot was built for (a freed model's memory reused), the slot is first moved to a
vocabulary-only copy of the new model, which forces a rebuild: the stale tokenizer would
otherwise mask the wrong tokens or trip llama.cpp's size assertion and abort the process.
llguidance reports a grammar it cannot compile only on stderr and returns a sampler that constrains
nothing, so each new sampler is tried once on the whole vocabulary: a live grammar forbids some
token.

It knows nothing of requests, schemas or chat: it turns grammar text into a sampler.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from coserve.backends import llama_capi
from coserve.backends.llama_model import LoadedModel

__all__ = ["grammar_sampler"]

_LOCK = threading.Lock()
_built_for: tuple[int | None, int | None] = (None, None)  # (vocabulary address, LoadedModel.serial)


def _rebuild_slot(model: LoadedModel) -> None:
    """Move llama.cpp's tokenizer slot off ``model.vocab``'s address (held by a freed model's)."""
    global _built_for
    lib = llama_capi.lib()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    params.n_gpu_layers = 0
    other = lib.llama_model_load_from_file(str(model.path).encode(), params)  # elsewhere: model is alive
    if not other:
        raise ValueError(f"cannot read the vocabulary of {model.path}: {llama_capi.last_error()}")
    try:
        vocab = lib.llama_model_get_vocab(other)
        lib.llama_sampler_free(lib.llama_sampler_init_llg(vocab, b"lark", b'%llguidance {}\nstart: "x"'))
        _built_for = (vocab, None)
    finally:
        lib.llama_model_free(other)


def grammar_sampler(model: LoadedModel, grammar: str) -> Any:
    """A sampler (freed by llama_sampler_free, or by the chain it joins) that keeps the decode on
    ``model`` to the llguidance ``grammar``; ValueError when the grammar does not compile."""
    global _built_for
    lib = llama_capi.lib()
    with _LOCK:
        if _built_for[0] == model.vocab and _built_for[1] != model.serial:
            _rebuild_slot(model)
        sampler = lib.llama_sampler_init_llg(model.vocab, b"lark", grammar.encode("utf-8"))
        _built_for = (model.vocab, model.serial)
    if not sampler:
        raise ValueError("the grammar did not compile")
    candidates = np.zeros(model.n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    candidates["id"] = np.arange(model.n_vocab)
    data = candidates.ctypes.data_as(ctypes.POINTER(llama_capi.TokenData))
    lib.llama_sampler_apply(sampler, ctypes.byref(llama_capi.TokenDataArray(data, model.n_vocab, -1, False)))
    if not np.isneginf(candidates["logit"]).any():
        lib.llama_sampler_free(sampler)
        raise ValueError("the grammar did not compile")
    return sampler
