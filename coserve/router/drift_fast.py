"""Two faster paths to a downward alarm of the change detector (session 13, branch adapt13b; both off by default).

On the tuning runs the true alarm came late where the shocked expert's traffic fell at the shock (the category
mix moved away from it), so its feedback was sparse, and each feedback's evidence was small: the CUSUM reads
residuals against the posterior, which meanwhile learns part of the drop (``scripts/adapt_diagnose_s13b.py``).

* ``ClimbAnchor`` (``ChangeSettings.anchor``): while an expert's down side climbs, its residuals are read
  against the estimate each of its cells had when that side last left 0, not against the posterior as it has
  learnt since, so the part of the drop the posterior absorbed during the climb still counts. While the side
  stands at 0 the anchor follows the posterior (a residual is then read as it is). The anchor is not saved: a
  restart anchors each expert at the estimate it resumes with.
* ``FastLane`` (``ChangeSettings.fast_threshold`` > 0): a second, down-side-only CUSUM on the same residuals,
  with its own (larger) drift and (lower) level, ``stat = max(0, stat - r - fast_drift)``: a large drop on an
  expert that gets little feedback passes it sooner than the main CUSUM's level. Its alarm is the detector's
  alarm (the estimated shift is its mean residual since it last stood at 0), and every side of both restarts.

Pure numbers; knows nothing about posteriors' storage, routing or HTTP (``coserve.router.drift`` holds them).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["ClimbAnchor", "FastLane", "anchored_correction", "saved_statistic"]

_FAST_ARRAYS = ("stat", "total", "count")


def saved_statistic(state: dict[str, Any], key: str, shape: tuple[int, ...], signed: bool, what: str) -> np.ndarray:
    """A CUSUM statistic from a saved state, checked: ``shape``, finite, and >= 0 unless ``signed`` (only
    the residual sums may be negative); ValueError naming ``what`` otherwise."""
    try:
        array = np.asarray(state[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{what} is incomplete or malformed: {exc}") from None
    if array.shape != shape or not np.isfinite(array).all() or not (signed or bool((array >= 0).all())):
        raise ValueError(f"{what} has another shape or impossible values")
    return array


class ClimbAnchor:
    """Per (category, expert), the estimate the expert's residuals are read against while its down side climbs."""

    def __init__(self, categories: int, experts: int) -> None:
        if categories <= 0 or experts <= 0:
            raise ValueError("categories and experts must be positive")
        self.anchor = np.full((categories, experts), np.nan)  # NaN: not anchored yet

    def correction(self, category: int, expert: int, estimate: np.ndarray, climbing: bool) -> float:
        """What to add to a residual of ``expert`` on ``category`` measured against ``estimate`` (the expert's
        estimate per category ``[K]``, before the score joins it): ``estimate[category] - anchor``. Where its
        down side is not ``climbing`` (or nothing is anchored) the anchor moves to ``estimate`` and it is 0."""
        if not climbing or np.isnan(self.anchor[category, expert]):
            self.anchor[:, expert] = estimate
            return 0.0
        return float(estimate[category] - self.anchor[category, expert])


class FastLane:
    """A down-side-only CUSUM per expert with its own drift and level (module docstring)."""

    def __init__(self, experts: int, drift: float, threshold: float) -> None:
        if experts <= 0 or not drift >= 0 or not threshold > 0:
            raise ValueError("experts and the fast lane's threshold must be positive and its drift >= 0")
        self.drift, self.threshold = float(drift), float(threshold)
        self.stat, self.total, self.count = np.zeros(experts), np.zeros(experts), np.zeros(experts)

    def observe(self, expert: int, residual: float) -> float | None:
        """Add one residual of ``expert``; its mean since the lane last stood at 0 where that passes the level
        (the lane then restarts), else None."""
        value = self.stat[expert] - residual - self.drift
        if value <= 0.0:
            self.reset(expert)
            return None
        self.stat[expert] = value
        self.total[expert] += residual
        self.count[expert] += 1.0
        if self.stat[expert] <= self.threshold:
            return None
        shift = float(self.total[expert] / self.count[expert])
        self.reset(expert)
        return shift

    def reset(self, expert: int) -> None:
        """Start ``expert``'s lane afresh."""
        self.stat[expert] = self.total[expert] = self.count[expert] = 0.0

    def export_state(self) -> dict[str, Any]:
        """The lane's statistics as JSON values."""
        return {f"fast_{name}": getattr(self, name).tolist() for name in _FAST_ARRAYS}

    def restore(self, state: dict[str, Any]) -> None:
        """Load ``export_state``'s output (a state saved without a fast lane: it starts at 0); ValueError
        (nothing changed) where it does not fit."""
        if not any(f"fast_{name}" in state for name in _FAST_ARRAYS):
            self.stat, self.total, self.count = (np.zeros_like(self.stat) for _ in range(3))
            return
        loaded = {
            name: saved_statistic(state, f"fast_{name}", self.stat.shape, name == "total", "the fast lane's state")
            for name in _FAST_ARRAYS
        }
        self.stat, self.total, self.count = loaded["stat"], loaded["total"], loaded["count"]


class _Anchored(Protocol):
    anchor: ClimbAnchor | None
    stat: dict[str, np.ndarray]


def anchored_correction(detector: _Anchored | None, category: int, expert: int, estimate: np.ndarray) -> float:
    """The correction ``detector``'s anchor adds to a residual of ``expert`` on ``category`` against ``estimate``
    ``[K, E]`` (0 without a detector or an anchor)."""
    if detector is None or detector.anchor is None:
        return 0.0
    climbing = bool(detector.stat["down"][expert] > 0.0)
    return detector.anchor.correction(category, expert, np.asarray(estimate)[:, expert], climbing)
