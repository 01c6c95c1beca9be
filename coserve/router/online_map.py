"""The online router's decision types: a versioned category -> expert map, one decision, and the solve.

Moved out of ``coserve.router.online`` (which re-exports them) to keep that module under the size limit.
Pure numbers: knows nothing about feedback, the budget controller, HTTP or the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coserve.router.mapping import choose_per_prompt

__all__ = ["Decision", "MapSnapshot", "solve_weighted"]


@dataclass(frozen=True)
class MapSnapshot:
    """One versioned category -> expert map and the numbers it was solved from."""

    version: int
    weight: float
    means: np.ndarray  # [K, E] posterior means when solved
    assignment: tuple[int, ...]  # expert per category with every expert allowed


@dataclass(frozen=True)
class Decision:
    """What the router chose for one request."""

    category: int
    expert: int
    explored: bool
    map_version: int


def solve_weighted(means: np.ndarray, cost: np.ndarray, weight: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Per category, the expert maximising ``means - weight * cost`` (cost in target units), among ``allowed``."""
    scores = np.asarray(means, dtype=np.float64)
    if allowed is not None:
        scores = np.where(allowed[None, :], scores, -np.inf)
    return choose_per_prompt(scores, np.asarray(cost, dtype=np.float64), weight)
