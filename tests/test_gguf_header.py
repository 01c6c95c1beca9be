"""The GGUF header reader and the memory figures derived from it (KV cache, llama.cpp footprint)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coserve.backends.gguf_header import kv_cache_bytes, read_header
from coserve.errors import AssetError

Q4_K, Q6_K, F32 = 12, 14, 0


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, list) and value and isinstance(value[0], str):
        return struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_string(v) for v in value)
    if isinstance(value, list):
        return struct.pack("<IIQ", 9, 4, len(value)) + b"".join(struct.pack("<I", v) for v in value)
    return struct.pack("<II", 4, value)


def write_gguf(path: Path, metadata: dict[str, Any], tensors: list[tuple[str, tuple[int, ...], int]]) -> Path:
    """A GGUF v3 header (no tensor data: the reader never looks past the tensor table)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, value in metadata.items():
        out += _string(key) + _value(value)
    for name, shape, ttype in tensors:
        out += _string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ttype, 0)
    path.write_bytes(out)
    return path


def _model(path: Path, **extra: Any) -> Path:
    metadata = {
        "general.architecture": "qwen2",
        "qwen2.block_count": 2,
        "qwen2.embedding_length": 256,
        "qwen2.attention.head_count": 4,
        "qwen2.attention.head_count_kv": 2,
        "qwen2.feed_forward_length": 512,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(5000)],  # long: skipped, not kept
        **extra,
    }
    tensors = [
        ("token_embd.weight", (256, 1000), Q4_K),
        ("blk.0.ffn_up.weight", (256, 512), Q4_K),
        ("blk.0.ffn_down.weight", (512, 256), Q6_K),
        ("blk.0.attn_norm.weight", (256,), F32),
    ]
    return write_gguf(path, metadata, tensors)


def test_reads_metadata_and_tensor_sizes(tmp_path: Path) -> None:
    header = read_header(_model(tmp_path / "m.gguf"))
    assert header.arch == "qwen2" and header.get("block_count") == 2
    assert header.metadata["tokenizer.ggml.tokens"] is None  # the long array was skipped
    sizes = {t.name: t.nbytes for t in header.tensors}
    assert sizes["blk.0.ffn_up.weight"] == 256 * 512 // 256 * 144  # Q4_K: 144 bytes per 256 values
    assert sizes["blk.0.ffn_down.weight"] == 512 * 256 // 256 * 210  # Q6_K
    assert sizes["blk.0.attn_norm.weight"] == 256 * 4


def test_kv_cache_bytes_follow_heads_and_context(tmp_path: Path) -> None:
    header = read_header(_model(tmp_path / "m.gguf"))
    # 2 layers x 2 KV heads x (64 + 64) values (head size 256 / 4) x 2 bytes, per cell
    assert kv_cache_bytes(header, 1000) == 2 * 2 * 128 * 2 * 1000
    assert kv_cache_bytes(header, 2000) == 2 * kv_cache_bytes(header, 1000)
    per_layer = read_header(_model(tmp_path / "p.gguf", **{"qwen2.attention.head_count_kv": [2, 0]}))
    assert kv_cache_bytes(per_layer, 1000) == kv_cache_bytes(header, 1000) // 2  # second layer keeps none
    explicit = read_header(_model(tmp_path / "k.gguf", **{"qwen2.attention.key_length": 128}))
    assert kv_cache_bytes(explicit, 1) == 2 * 2 * (128 + 64) * 2


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"GGML" + b"\0" * 64, "not a GGUF"), (b"GGUF" + struct.pack("<I", 9) + b"\0" * 16, "version 9")],
)
def test_foreign_files_are_refused(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(AssetError) as info:
        read_header(path)
    assert words in info.value.message


def test_truncated_header_is_refused_clearly(tmp_path: Path) -> None:
    whole = _model(tmp_path / "m.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AssetError) as info:
        read_header(cut)
    assert "truncated or corrupt" in info.value.message and "end of file" in info.value.message


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = _model(tmp_path / "m.gguf")
    assert read_header(path).get("block_count") == 2
    _model(path, **{"qwen2.block_count": 3, "general.name": "longer, so the size differs"})
    assert read_header(path).get("block_count") == 3


_RSS_PROBE = """
import sys
from coserve.backends.llamacpp import LlamaCppBackend
from coserve.config import load_library

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))

library = load_library()
spec, base = library.expert(sys.argv[1]), library.path.parent
backend = LlamaCppBackend()
estimate = backend.footprint(spec, base)
staged = backend.stage(spec, base)  # the file's pages in the page cache: not this process's RSS
before = rss()
handle = backend.load(spec, staged)
print(estimate, rss() - before)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("expert", ["general", "coder", "large"])
def test_llamacpp_footprint_matches_what_loading_costs(expert: str) -> None:
    """The footprint the ACTIVE budget counts, against the resident memory a real load adds (in a
    fresh process): weights, repacked copies, the KV cache of every slot, compute buffers."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, expert], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    estimate, measured = map(int, out.stdout.split()[-2:])
    assert abs(estimate - measured) / measured < 0.10, (estimate, measured)


@pytest.mark.e2e
def test_llamacpp_footprint_follows_slots_context_and_prompt_cache() -> None:
    """What the library file changes, the footprint follows: the KV cache scales with slots x
    context, a prompt cache is counted in full, the weights stay."""
    from coserve.assets import model_path
    from coserve.backends.llamacpp import LlamaCppBackend
    from coserve.config import load_library

    library = load_library()
    base = library.path.parent if library.path else None
    spec = library.expert("general")
    backend = LlamaCppBackend()
    kv = kv_cache_bytes(read_header(model_path(spec, base)), spec.context * 4)
    assert kv == 360 * 2**20  # 30 layers x 3 KV heads x 128 values x 2 bytes x 16384 cells
    four = backend.footprint(spec.model_copy(update={"options": {"n_parallel": 4}}), base)
    two = backend.footprint(spec.model_copy(update={"options": {"n_parallel": 2}}), base)
    assert 0.95 * kv / 2 < four - two < 1.05 * kv / 2  # half the KV cache (and a little compute)
    short = backend.footprint(spec.model_copy(update={"context": 1024, "options": {"n_parallel": 4}}), base)
    assert four - short > 0.7 * kv
    cached = backend.footprint(spec.model_copy(update={"options": {"n_parallel": 4, "prompt_cache_mib": 64}}), base)
    assert cached - four == 64 * 2**20
    assert short > model_path(spec, base).stat().st_size  # the weights are always counted
