"""Paired bootstrap over items: how far a mean could move with another draw of the same items.

Every figure measured on the same items (prompts, runs) is one column of a matrix [items, figures]; a
resample draws items with replacement, once for all columns, so each item's figures stay together (pairs
resampled, not figures) and a difference of two columns has the interval of its pairs. Draws are seeded
(a file's intervals can be reproduced) and taken a chunk at a time so memory stays a few MB on any number
of items; a chunk's draw becomes counts per item and the resampled means one matrix product, so a
thousand figures cost little more than one. A missing value (NaN) is left out of its column's mean, as
``numpy.nanmean`` does. This module knows nothing about routers, prompts or runs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RESAMPLES", "SEED", "interval", "intervals", "resample_means"]

RESAMPLES, SEED = 2000, 0  # the project's default draw: 2,000 resamples from seed 0
CHUNK_CELLS = 2_000_000  # item draws held at a time (a chunk's indices and counts: ~32 MB at most)


def resample_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The column means of ``values`` [items, figures] (or one figure: [items]) in each of ``resamples``
    resamples of the items: [resamples, figures] (or [resamples])."""
    V = np.asarray(values, dtype=np.float64)
    flat = V.ndim == 1
    V = V[:, None] if flat else V
    n = V.shape[0]
    if n == 0 or resamples < 1:
        raise ValueError("bootstrap: needs at least one item and one resample")
    present = np.isfinite(V)
    filled = np.where(present, V, 0.0)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // n)
    parts = []
    for done in range(0, resamples, chunk):
        size = min(chunk, resamples - done)
        rows = rng.integers(0, n, size=(size, n))
        counts = np.bincount((rows + n * np.arange(size)[:, None]).ravel(), minlength=size * n).reshape(size, n)
        counts = counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # a column with no value in a resample: NaN
            parts.append((counts @ filled) / (counts @ present if not present.all() else n))
    means = np.concatenate(parts)
    return means[:, 0] if flat else means


def interval(means: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval holding ``level`` of the bootstrap ``means`` of one figure; resamples where
    the figure is undefined (NaN) are left out, and NaN both ends when none is defined."""
    low, high = intervals(np.asarray(means, dtype=np.float64)[:, None], level)[0]
    return float(low), float(high)


def intervals(means: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Per column of ``means`` [resamples, figures], its percentile interval: [figures, 2] (low, high)."""
    tail = (1.0 - level) / 2
    M = np.asarray(means, dtype=np.float64)
    defined = np.isfinite(M).any(axis=0)
    out = np.full((M.shape[1], 2), np.nan)
    if defined.any():
        with np.errstate(invalid="ignore"):
            out[defined] = np.nanquantile(M[:, defined], [tail, 1.0 - tail], axis=0).T
    return out
