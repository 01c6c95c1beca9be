"""What a GGUF file's header says about an expert's memory: weights by tensor type, KV-cache shape.

Written here rather than taken from the ``gguf`` package because its reader parses every field
eagerly (the 150k-entry tokenizer arrays included): 2.4-7.7 s per file on this machine, paid on
every start for every expert. This reader skips what it does not need and takes milliseconds.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (version 2 and 3).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from coserve.errors import AssetError

__all__ = ["GGUFHeader", "kv_cache_bytes", "n_vocab", "read_header"]

_MAGIC = b"GGUF"
# value type -> struct format of one element (strings and arrays are handled apart)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 1024  # numeric arrays up to this length are kept (per-layer head counts); longer ones skipped

# ggml tensor type -> (block size in elements, bytes per block), for the types GGUF experts use.
_BLOCKS = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}
TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    20: "IQ4_NL",
    30: "BF16",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    type: int

    @property
    def nbytes(self) -> int:
        block, size = _BLOCKS.get(self.type, (1, 0))
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: tuple[Tensor, ...] = field(default=())

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))

    def get(self, key: str, default: Any = None) -> Any:
        """An architecture key without its prefix: ``get("block_count")``."""
        return self.metadata.get(f"{self.arch}.{key}", default)


def _unpack(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _unpack(f, "<Q")
    return f.read(n).decode("utf-8", errors="replace")


def _skip_string(f: BinaryIO) -> None:
    f.seek(_unpack(f, "<Q"), 1)


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALAR:
        return _unpack(f, _SCALAR[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        etype, n = _unpack(f, "<I"), _unpack(f, "<Q")
        if etype in _SCALAR and n <= _SMALL_ARRAY:
            return [_unpack(f, _SCALAR[etype]) for _ in range(n)]
        if etype in _SCALAR:
            f.seek(n * struct.calcsize(_SCALAR[etype]), 1)
        elif etype == _STRING:
            for _ in range(n):
                _skip_string(f)
        else:
            for _ in range(n):
                _value(f, etype)
        return None  # long arrays (the tokenizer's) are not kept
    raise ValueError(f"unknown GGUF value type {vtype}")


@functools.lru_cache(maxsize=64)
def _read(path: Path, size: int, mtime: float) -> GGUFHeader:
    try:
        with open(path, "rb") as f:
            if f.read(4) != _MAGIC:
                raise AssetError(f"{path} is not a GGUF file (bad magic)")
            version = _unpack(f, "<I")
            if version not in (2, 3):
                raise AssetError(f"{path}: GGUF version {version} is not supported")
            n_tensors, n_kv = _unpack(f, "<Q"), _unpack(f, "<Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _string(f)
                metadata[key] = _value(f, _unpack(f, "<I"))
            tensors = []
            for _ in range(n_tensors):
                name = _string(f)
                n_dims = _unpack(f, "<I")
                shape = tuple(_unpack(f, "<Q") for _ in range(n_dims))
                ttype = _unpack(f, "<I")
                _unpack(f, "<Q")  # data offset
                tensors.append(Tensor(name, shape, ttype))
    except (EOFError, ValueError, struct.error) as exc:
        raise AssetError(f"{path}: truncated or corrupt GGUF header ({str(exc) or 'unexpected end of file'})") from None
    return GGUFHeader(metadata, tuple(tensors))


def read_header(path: Path) -> GGUFHeader:
    """The metadata (long arrays left out) and tensor table of a GGUF file; cached per file version."""
    st = path.stat()
    return _read(path, st.st_size, st.st_mtime)


def _per_layer(value: Any, n_layer: int) -> list[int]:
    """A per-layer count that GGUF stores as one number or as one number per layer."""
    if isinstance(value, list):
        return [int(v) for v in value[:n_layer]] + [int(value[-1])] * max(0, n_layer - len(value))
    return [int(value)] * n_layer


def n_vocab(header: GGUFHeader) -> int:
    """Vocabulary size, from the token embedding's shape (0 if the file has none)."""
    embd = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    return embd.shape[1] if embd is not None and len(embd.shape) == 2 else 0


def kv_cache_bytes(header: GGUFHeader, n_ctx: int, bytes_per_value: float = 2) -> int:
    """Bytes of a KV cache of ``n_ctx`` cells (all sequences together), f16 by default.

    Per layer and cell: K and V rows of ``head_count_kv`` heads of ``key_length`` / ``value_length``
    values (both default to embedding_length / head_count). Sliding-window layers are counted at
    full size, so for such models this is an upper bound."""
    n_layer = int(header.get("block_count", 0))
    n_embd = int(header.get("embedding_length", 0))
    heads = _per_layer(header.get("attention.head_count", 1), n_layer)
    kv_heads = _per_layer(header.get("attention.head_count_kv", header.get("attention.head_count", 1)), n_layer)
    total = 0
    for layer in range(n_layer):
        head_dim = n_embd // max(heads[layer], 1)
        k = int(header.get("attention.key_length", head_dim))
        v = int(header.get("attention.value_length", head_dim))
        total += kv_heads[layer] * (k + v)
    return int(total * n_ctx * bytes_per_value)
