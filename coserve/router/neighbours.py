"""Top-k cosine neighbours among a fixed set of prompt embeddings, shared by the kNN models.

Below ``exact_below`` stored rows the search is one exact matrix product in numpy; at or above it
an hnswlib graph (inner-product space on unit rows) answers approximately in logarithmic time. The
graph is built single-threaded from a fixed seed, so rebuilding it from the same rows after a load
gives the same graph and the same answers. Nothing is saved from here: callers keep the rows.
This module knows nothing about labels, categories or experts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["NeighbourIndex", "unit_rows"]

HNSW_M = 16  # graph degree: hnswlib's default, good recall for a few hundred dimensions
HNSW_EF_CONSTRUCTION = 200  # build-time beam; higher = better graph, slower build


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Float32, C-contiguous copy of ``X`` with unit-length rows (zero rows stay zero)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.where(norms > 0, norms, 1.0).astype(np.float32))


class NeighbourIndex:
    """Cosine k-nearest-neighbour search over fixed rows: exact numpy or hnswlib."""

    def __init__(self, vectors: np.ndarray, exact_below: int = 5000, ef: int = 64, seed: int = 0) -> None:
        self.vectors = unit_rows(vectors)
        self.ef = ef
        self.uses_hnsw = len(self.vectors) >= exact_below
        self._hnsw: Any = None
        if self.uses_hnsw:
            import hnswlib

            n, dim = self.vectors.shape
            index = hnswlib.Index(space="ip", dim=dim)
            index.init_index(max_elements=n, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=seed)
            index.add_items(self.vectors, np.arange(n), num_threads=1)  # one thread: a reproducible graph
            self._hnsw = index

    def __len__(self) -> int:
        return len(self.vectors)

    def query(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``[n, k]`` (int64) and cosine similarities ``[n, k]`` (float32), most similar first."""
        k = max(1, min(k, len(self.vectors)))
        Q = unit_rows(X)
        if self._hnsw is not None:
            self._hnsw.set_ef(max(self.ef, k))
            labels, distances = self._hnsw.knn_query(Q, k=k)
            return labels.astype(np.int64), (1.0 - distances).astype(np.float32)
        sims = Q @ self.vectors.T
        if k < sims.shape[1]:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy()
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1).astype(np.int64), np.take_along_axis(top_sims, order, axis=1)
