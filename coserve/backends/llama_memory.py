"""What both llama.cpp backends share: where an expert's GGUF file is, what a context costs in host
memory, how freed memory goes back to the OS, and the defaults of the options they both read.

It knows nothing of either runtime (it imports neither xllamacpp nor the C API).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import Any

from coserve.assets import model_path
from coserve.backends.gguf_header import GGUFHeader, n_vocab
from coserve.config import ExpertSpec
from coserve.errors import AssetError

__all__ = [
    "DEFAULT_N_PARALLEL",
    "UBATCH",
    "bound_heap_arenas",
    "compute_buffer_bytes",
    "gguf_path",
    "return_free_memory",
]

DEFAULT_N_PARALLEL = 2  # slots: requests decoded together
UBATCH = 512  # tokens of llama.cpp's physical batch: its compute buffers scale with it


@functools.cache
def bound_heap_arenas() -> Any:
    """glibc, with its heap arenas bounded (once per process, before any runtime thread starts);
    None where there is no glibc.

    glibc gives each new thread its own heap arena, up to 8 per core; every load starts fresh
    runtime threads, so arenas (and resident memory) step up over load/unload cycles."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if hasattr(libc, "mallopt"):
        libc.mallopt(-8, int(os.environ.get("COSERVE_MALLOC_ARENAS", "2")))  # M_ARENA_MAX
    return libc


def return_free_memory() -> None:
    """Give the heap pages an unloaded runtime freed back to the OS (glibc's malloc_trim): without
    it, freed arenas stay in the process and resident memory creeps up over load/unload cycles."""
    libc = bound_heap_arenas()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def compute_buffer_bytes(header: GGUFHeader, n_parallel: int) -> int:
    """llama.cpp's CPU compute buffers for a context: a fit to its reserve for the three default
    experts (activations of one 512-token micro-batch, logits of each slot's last token), rounded up."""
    n_embd = int(header.get("embedding_length", 0))
    n_ff = header.get("feed_forward_length", 4 * n_embd)
    n_ff = max(n_ff) if isinstance(n_ff, list) else int(n_ff)
    return UBATCH * 4 * (3 * n_ff + 8 * n_embd) + n_parallel * n_vocab(header) * 8


def gguf_path(spec: ExpertSpec, base: Path | None) -> Path:
    """The expert's GGUF file (AssetError for a folder: llama.cpp reads one file)."""
    path = model_path(spec, base)
    if path.is_dir():
        raise AssetError(f"expert {spec.name!r}: llama.cpp needs a GGUF file; {path} is a folder")
    return path
