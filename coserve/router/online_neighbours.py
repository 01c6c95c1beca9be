"""A neighbour correction for prompt-mode routing: what feedback on similar prompts says about a new one.

In prompt mode (``coserve.router.online``) a request's estimate for expert ``e`` is the offline per-prompt
prediction plus its category's learnt correction; feedback on one prompt reaches another only through
their category. ``NeighbourMemory`` keeps the last ``memory`` feedback residuals (the prompt's unit
vector, the expert, the observed score minus the estimate the router held for that prompt and expert)
and corrects a new prompt's estimate for ``e`` by the residuals of its ``k`` most similar remembered
prompts fed back for ``e`` (cosine similarity at least ``min_similarity``), shrunk toward 0:
``sum(residuals) / (n + shrink)`` with ``n <= k`` neighbours found. No neighbour: no correction.

``skip_identical`` leaves out remembered prompts whose vector is the new one's (similarity above
``1 - IDENTICAL``): a measurement knob, to tell learning from similar prompts apart from learning an
exact prompt's repeats. ``forget(expert)`` drops an expert's residuals (the change detector moved its
means: they were measured against the old ones).

Brute force over at most ``memory`` vectors with numpy (a few thousand rows: one matrix-vector
product per request). The memory is not part of the router's saved state: a restart starts it empty.
Knows nothing about categories, costs, the budget, HTTP or the store.
"""

from __future__ import annotations

import numpy as np

from coserve.config_routing import NeighbourSettings

__all__ = ["IDENTICAL", "NeighbourMemory"]

IDENTICAL = 1e-6  # a similarity above 1 - this is read as the same prompt (skip_identical)


class NeighbourMemory:
    """A ring of the last ``memory`` feedback residuals and the shrunk mean of a prompt's nearest ones."""

    def __init__(self, settings: NeighbourSettings, experts: int) -> None:
        self.settings = settings
        self.experts = int(experts)
        self._vectors: np.ndarray | None = None  # [memory, dim] unit vectors, allocated at the first residual
        self._expert = np.full(settings.memory, -1, dtype=np.int64)  # -1: an empty or forgotten slot
        self._residual = np.zeros(settings.memory)
        self._next = 0  # the slot the next residual overwrites

    def __len__(self) -> int:
        return int((self._expert >= 0).sum())

    @staticmethod
    def _unit(vector: np.ndarray | list[float]) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float64).ravel()
        norm = float(np.linalg.norm(v))
        if not np.isfinite(v).all() or norm == 0.0:
            raise ValueError("a prompt vector must be finite and not all zero")
        return v / norm

    def add(self, vector: np.ndarray | list[float], expert: int, residual: float) -> None:
        """Remember ``residual`` (observed score - estimate) of ``expert`` on the prompt of ``vector``."""
        if not 0 <= expert < self.experts:
            raise ValueError(f"expert index {expert} out of range")
        unit = self._unit(vector)
        if self._vectors is None:
            self._vectors = np.zeros((self.settings.memory, unit.shape[0]))
        if unit.shape[0] != self._vectors.shape[1]:
            raise ValueError(f"a prompt vector must have {self._vectors.shape[1]} numbers, not {unit.shape[0]}")
        slot = self._next
        self._vectors[slot], self._expert[slot], self._residual[slot] = unit, expert, float(residual)
        self._next = (slot + 1) % self.settings.memory

    def forget(self, expert: int) -> None:
        """Drop every residual of ``expert``."""
        self._expert[self._expert == expert] = -1

    def correction(self, vector: np.ndarray | list[float]) -> np.ndarray:
        """Per expert ``[E]``: the shrunk mean residual of the prompt's nearest remembered prompts (0 without)."""
        out = np.zeros(self.experts)
        if self._vectors is None or len(self) == 0:
            return out
        unit = self._unit(vector)
        if unit.shape[0] != self._vectors.shape[1]:
            raise ValueError(f"a prompt vector must have {self._vectors.shape[1]} numbers, not {unit.shape[0]}")
        s = self.settings
        similarity = self._vectors @ unit
        usable = (self._expert >= 0) & (similarity >= s.min_similarity)
        if s.skip_identical:
            usable &= similarity <= 1.0 - IDENTICAL
        for expert in np.unique(self._expert[usable]):
            rows = np.flatnonzero(usable & (self._expert == expert))
            nearest = rows[np.argsort(-similarity[rows], kind="stable")[: s.k]]
            out[expert] = self._residual[nearest].sum() / (len(nearest) + s.shrink)
        return out
