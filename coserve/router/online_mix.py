"""The recent traffic the budget controller's feed-forward weight is read from, and a jump test on its mix.

``RecentMix`` keeps the categories (and, in prompt mode, the corrected per-prompt prediction rows) of
the latest ``window`` requests. ``weight`` is the smallest cost weight whose choices over them cost at
most the target (``drift.weight_for_mix``). A long window is a steady estimate of the mix but lags a
jump of it (a new phase of traffic): with ``jump`` > 0, the total-variation distance between the
category shares of the last ``short`` requests and of the window's older requests is tested first, and
where it passes ``jump`` the weight is read from the last ``short`` requests alone, until the long window
has caught up (the distance falls back under ``jump``).

Pure numbers; knows nothing about posteriors, the controller or HTTP (``coserve.router.online`` uses it).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from coserve.router.drift import weight_for_mix

__all__ = ["RecentMix", "total_variation"]


def total_variation(left: np.ndarray, right: np.ndarray, categories: int) -> float:
    """Half the L1 distance between the category shares of two samples of category indices (0 if either is empty)."""
    if len(left) == 0 or len(right) == 0:
        return 0.0
    p = np.bincount(left, minlength=categories) / len(left)
    q = np.bincount(right, minlength=categories) / len(right)
    return 0.5 * float(np.abs(p - q).sum())


class RecentMix:
    """The latest requests' categories and prediction rows; the feed-forward weight they need."""

    def __init__(self, window: int, categories: int, jump: float = 0.0, short: int = 100) -> None:
        if window < 0 or categories <= 0 or not 0.0 <= jump <= 1.0 or short <= 0:
            raise ValueError("window must be >= 0, categories and short > 0, and jump in [0, 1]")
        self.window, self.categories = int(window), int(categories)
        self.jump, self.short = float(jump), int(short)
        self.category: deque[int] = deque(maxlen=max(1, window))
        self.rows: deque[np.ndarray] = deque(maxlen=max(1, window))
        self.jumped = False  # whether the last weight was read from the short window

    def __len__(self) -> int:
        return len(self.category)

    def join(self, category: int, row: np.ndarray) -> None:
        """A routed request of ``category`` with its prediction row (the category's means in category mode)."""
        self.category.append(int(category))
        self.rows.append(row)

    def recent(self) -> slice:
        """The requests the weight reads: all of the window, or its last ``short`` after a jump of the mix."""
        categories = np.fromiter(self.category, dtype=np.int64)
        older, latest = categories[: -self.short], categories[-self.short :]
        self.jumped = self.jump > 0 and total_variation(latest, older, self.categories) > self.jump
        return slice(len(categories) - self.short, None) if self.jumped else slice(0, None)

    def weight(self, correction: np.ndarray, scaled_cost: np.ndarray, per_prompt: bool, least: float = 0.0) -> float:
        """The smallest weight (>= ``least``) whose choices over the recent requests cost at most the target;
        ``correction`` [K, E] is added to each request's row (prompt mode: what feedback taught; category
        mode: the means)."""
        part = self.recent()
        categories = np.fromiter(self.category, dtype=np.int64)[part]
        if per_prompt:
            rows = np.asarray(self.rows)[part] + correction[categories]
            return weight_for_mix(rows, scaled_cost, np.ones(len(rows)), least=least)
        counts = np.bincount(categories, minlength=self.categories)
        return weight_for_mix(correction, scaled_cost, counts, least=least)
