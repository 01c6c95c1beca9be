"""llama.cpp's C API (``llama.h``) through ctypes, from the llama.cpp library inside ``xllamacpp``.

``xllamacpp``'s prebuilt wheel (manylinux2014, glibc >= 2.17) links llama.cpp statically into its
extension module and exports the whole C API from it, so the ``llamacpp-split`` backend calls the
very llama.cpp that backend ``llamacpp`` runs: one llama.cpp in the process, nothing to compile.
Only what the split backend calls is declared here. The structures are declared field for field as
``llama.h`` lays them out at the llama.cpp build of the pinned xllamacpp (pyproject.toml); ctypes
cannot check a layout, so ``lib()`` compares the library's default parameters with the values that
build returns and refuses a library that differs (another xllamacpp version) with a clear error.

It knows nothing of experts, tiers or requests.
"""

from __future__ import annotations

import collections
import ctypes
import functools
from typing import Any

from coserve.backends.llama_runtime import xllamacpp
from coserve.errors import ExpertLoadError

__all__ = [
    "DEFAULT_SEED",
    "FLASH_ATTN_ENABLED",
    "LOAD_MODE_NONE",
    "ContextParams",
    "ModelParams",
    "last_error",
    "lib",
]

c_bool, c_float, c_int, c_int8, c_int32, c_uint32, c_size_t, c_void_p, c_char_p = (
    ctypes.c_bool,
    ctypes.c_float,
    ctypes.c_int,
    ctypes.c_int8,
    ctypes.c_int32,
    ctypes.c_uint32,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_char_p,
)
Token = ctypes.c_int32  # llama_token, llama_pos and llama_seq_id are all int32_t

LOAD_MODE_NONE = 0  # enum llama_load_mode: read into llama.cpp's buffers, no mapping
FLASH_ATTN_ENABLED = 1  # enum llama_flash_attn_type
DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed
_ERROR_LEVEL = 4  # GGML_LOG_LEVEL_ERROR


class ModelParams(ctypes.Structure):
    """struct llama_model_params."""

    _fields_ = [
        ("devices", c_void_p),
        ("tensor_buft_overrides", c_void_p),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int),
        ("load_mode", c_int),
        ("lazy_mode", c_int),
        ("main_gpu", c_int32),
        ("tensor_split", c_void_p),
        ("progress_callback", c_void_p),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", c_void_p),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class ContextParams(ctypes.Structure):
    """struct llama_context_params."""

    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int),
        ("rope_scaling_type", c_int),
        ("pooling_type", c_int),
        ("attention_type", c_int),
        ("flash_attn_type", c_int),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", c_void_p),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_int),
        ("type_v", c_int),
        ("moe_cache_size", c_size_t),
        ("abort_callback", c_void_p),
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", c_void_p),
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),
    ]


class Batch(ctypes.Structure):
    """struct llama_batch: arrays of ``n_tokens`` entries, allocated by llama_batch_init."""

    _fields_ = [
        ("n_tokens", c_int32),
        ("token", ctypes.POINTER(Token)),
        ("embd", ctypes.POINTER(c_float)),
        ("pos", ctypes.POINTER(Token)),
        ("n_seq_id", ctypes.POINTER(c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(Token))),
        ("logits", ctypes.POINTER(c_int8)),
    ]


class TokenData(ctypes.Structure):
    """struct llama_token_data."""

    _fields_ = [("id", Token), ("logit", c_float), ("p", c_float)]


class TokenDataArray(ctypes.Structure):
    """struct llama_token_data_array."""

    _fields_ = [
        ("data", ctypes.POINTER(TokenData)),
        ("size", c_size_t),
        ("selected", ctypes.c_int64),
        ("sorted", c_bool),
    ]


class SamplerChainParams(ctypes.Structure):
    """struct llama_sampler_chain_params."""

    _fields_ = [("no_perf", c_bool)]


_LogCallback = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)

# name -> (result type, argument types)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "llama_backend_init": (None, []),
    "llama_log_set": (None, [_LogCallback, c_void_p]),
    "llama_model_default_params": (ModelParams, []),
    "llama_model_load_from_file": (c_void_p, [c_char_p, ModelParams]),
    "llama_model_free": (None, [c_void_p]),
    "llama_model_get_vocab": (c_void_p, [c_void_p]),
    "llama_model_chat_template": (c_char_p, [c_void_p, c_char_p]),
    "llama_vocab_bos": (Token, [c_void_p]),
    "llama_vocab_eos": (Token, [c_void_p]),
    "llama_vocab_get_add_bos": (c_bool, [c_void_p]),
    "llama_vocab_is_eog": (c_bool, [c_void_p, Token]),
    "llama_token_to_piece": (c_int32, [c_void_p, Token, c_char_p, c_int32, c_int32, c_bool]),
    "llama_tokenize": (c_int32, [c_void_p, c_char_p, c_int32, ctypes.POINTER(Token), c_int32, c_bool, c_bool]),
    "llama_context_default_params": (ContextParams, []),
    "llama_init_from_model": (c_void_p, [c_void_p, ContextParams]),
    "llama_free": (None, [c_void_p]),
    "llama_get_memory": (c_void_p, [c_void_p]),
    "llama_memory_seq_rm": (c_bool, [c_void_p, Token, Token, Token]),
    "llama_memory_seq_cp": (None, [c_void_p, Token, Token, Token, Token]),
    "llama_batch_init": (Batch, [c_int32, c_int32, c_int32]),
    "llama_batch_free": (None, [Batch]),
    "llama_decode": (c_int32, [c_void_p, Batch]),
    "llama_sampler_chain_default_params": (SamplerChainParams, []),
    "llama_sampler_chain_init": (c_void_p, [SamplerChainParams]),
    "llama_sampler_chain_add": (None, [c_void_p, c_void_p]),
    "llama_sampler_init_greedy": (c_void_p, []),
    "llama_sampler_init_top_p": (c_void_p, [c_float, c_size_t]),
    "llama_sampler_init_temp": (c_void_p, [c_float]),
    "llama_sampler_init_dist": (c_void_p, [c_uint32]),
    "llama_sampler_sample": (Token, [c_void_p, c_void_p, c_int32]),
    "llama_sampler_free": (None, [c_void_p]),
    "llama_sampler_init_penalties": (c_void_p, [c_int32, c_int32, c_float, c_float, c_float]),
    "llama_get_logits_ith": (ctypes.POINTER(c_float), [c_void_p, c_int32]),
    "llama_vocab_n_tokens": (c_int32, [c_void_p]),
    "llama_sampler_apply": (None, [c_void_p, ctypes.POINTER(TokenDataArray)]),
    # llguidance's sampler (llama.cpp's common library, linked into the same module): a grammar in
    # llguidance's format, as llama.cpp's JSON Schema converter writes it in this build. A C++
    # function (no C name): called by its mangled name, its arguments plain pointers.
    "llama_sampler_init_llg": (c_void_p, [c_void_p, c_char_p, c_char_p]),
}
_MANGLED = {"llama_sampler_init_llg": "_Z22llama_sampler_init_llgPK11llama_vocabPKcS3_"}

# Fields whose defaults the declared layout must read back (llama.cpp's defaults at the pinned
# build). Each sits at a different offset, so a field added or removed before it shows up here.
_CONTEXT_DEFAULTS: dict[str, Any] = {
    "n_ctx": 512,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_seq_max": 1,
    "flash_attn_type": -1,  # auto
    "type_k": 1,  # F16
    "type_v": 1,
    "offload_kqv": True,
    "no_perf": True,
    "kv_unified": False,
    "samplers": None,
    "n_samplers": 0,
    "ctx_other": None,
}
_MODEL_DEFAULTS = {"n_gpu_layers": -1, "split_mode": 1, "load_mode": -1, "use_extra_bufts": True, "load_mtp": False}

_errors: collections.deque[str] = collections.deque(maxlen=8)  # llama.cpp's last error lines


def _log(level: int, text: bytes | None, user_data: Any) -> None:
    if level == _ERROR_LEVEL and text:
        _errors.append(text.decode("utf-8", errors="replace").strip())


_log_callback = _LogCallback(_log)  # module-level: llama.cpp calls it from C for the process's life


def last_error() -> str:
    """llama.cpp's latest error lines, and forget them (ExpertLoadError / ExpertFailed details)."""
    text = "; ".join(e for e in _errors if e) or "no details from llama.cpp"
    _errors.clear()
    return text


def _mismatches(params: ctypes.Structure, expected: dict[str, Any]) -> list[str]:
    return [f"{k}={getattr(params, k)!r} (expected {v!r})" for k, v in expected.items() if getattr(params, k) != v]


@functools.cache
def lib() -> Any:
    """The C API, declared and initialised once, llama.cpp's log reduced to the errors we report."""
    try:
        native = xllamacpp().xllamacpp  # heap arenas and OpenMP's barrier wait set first (llama_runtime.py)
    except ImportError as exc:
        raise ExpertLoadError(f"backend llamacpp-split needs the xllamacpp package: {exc}") from None
    library = ctypes.CDLL(native.__file__)
    for name, (result, arguments) in _SIGNATURES.items():
        function = getattr(library, _MANGLED.get(name, name))
        function.restype, function.argtypes = result, arguments
        setattr(library, name, function)
    wrong = _mismatches(library.llama_context_default_params(), _CONTEXT_DEFAULTS)
    wrong += _mismatches(library.llama_model_default_params(), _MODEL_DEFAULTS)
    if wrong:
        raise ExpertLoadError(
            f"the llama.cpp in {native.__file__} is laid out unlike the one coserve declares "
            f"(install the xllamacpp version pyproject.toml pins): {', '.join(wrong)}"
        )
    library.llama_log_set(_log_callback, None)
    library.llama_backend_init()
    return library
