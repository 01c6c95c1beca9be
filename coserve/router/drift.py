"""Noticing change in live traffic: a shift in an expert's scores, and a shift in the category mix.

* ``ChangeDetector`` runs a two-sided CUSUM per expert on feedback residuals (an observed score minus
  the posterior mean it was predicted with), pooled over categories: ``up = max(0, up + r - drift)``,
  ``down = max(0, down - r - drift)``. When either passes ``threshold`` the expert has changed; the
  estimated shift is the mean residual since that side last stood at zero (the CUSUM's change-point
  estimate), and both sides restart. ``drift`` is half the smallest shift worth noticing; ``threshold``
  sets how rare false alarms are (a larger one waits for more evidence).
* ``weight_for_mix`` is the cost weight a map needs so that its expected cost over a category mix is at
  most the target: the smallest weight >= 0 whose per-category choices cost <= 1 in target units
  (bisection over the weight; the cost of the weighted map only falls as the weight grows).

Pure numbers; knows nothing about posteriors' storage, HTTP or the store.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coserve.router.mapping import choose_per_prompt

__all__ = ["ChangeDetector", "weight_for_mix"]

_SIDES = ("up", "down")


class ChangeDetector:
    """A two-sided CUSUM per expert on the residuals of its feedback."""

    def __init__(self, experts: int, drift: float = 0.05, threshold: float = 4.0) -> None:
        if experts <= 0 or drift < 0 or threshold <= 0:
            raise ValueError("experts and threshold must be positive and drift >= 0")
        self.drift, self.threshold = float(drift), float(threshold)
        # per side: the CUSUM statistic, and the sum and number of residuals since it last stood at zero
        self.stat = {side: np.zeros(experts) for side in _SIDES}
        self.total = {side: np.zeros(experts) for side in _SIDES}
        self.count = {side: np.zeros(experts) for side in _SIDES}

    def observe(self, expert: int, residual: float) -> float | None:
        """Add one residual of ``expert``; the estimated shift where that completes an alarm, else None."""
        for side, signed in (("up", residual), ("down", -residual)):
            value = self.stat[side][expert] + signed - self.drift
            if value <= 0.0:
                self.stat[side][expert] = self.total[side][expert] = self.count[side][expert] = 0.0
            else:
                self.stat[side][expert] = value
                self.total[side][expert] += residual
                self.count[side][expert] += 1.0
        for side in _SIDES:
            if self.stat[side][expert] > self.threshold:
                shift = float(self.total[side][expert] / self.count[side][expert])
                self.reset(expert)
                return shift
        return None

    def reset(self, expert: int) -> None:
        """Start ``expert``'s statistics afresh."""
        for side in _SIDES:
            self.stat[side][expert] = self.total[side][expert] = self.count[side][expert] = 0.0

    def export_state(self) -> dict[str, Any]:
        """The statistics as JSON values."""
        return {f"{name}_{side}": values[side].tolist() for name, values in self._arrays() for side in _SIDES}

    def restore(self, state: dict[str, Any]) -> None:
        """Load ``export_state``'s output; ValueError (nothing changed) where it does not fit."""
        arrays = dict(self._arrays())
        loaded = {}
        for name, values in arrays.items():
            for side in _SIDES:
                try:
                    array = np.asarray(state[f"{name}_{side}"], dtype=np.float64)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"the change detector's state is incomplete or malformed: {exc}") from None
                signed_ok = name == "total" or bool((array >= 0).all())  # only the residual sums may be negative
                if array.shape != values[side].shape or not np.isfinite(array).all() or not signed_ok:
                    raise ValueError("the change detector's state has another shape or impossible values")
                loaded[(name, side)] = array
        for (name, side), array in loaded.items():
            arrays[name][side] = array

    def _arrays(self) -> tuple[tuple[str, dict[str, np.ndarray]], ...]:
        return (("stat", self.stat), ("total", self.total), ("count", self.count))


def weight_for_mix(means: np.ndarray, scaled_cost: np.ndarray, mix: np.ndarray, iters: int = 40) -> float:
    """Smallest weight >= 0 at which the map maximising ``means - weight * scaled_cost`` costs at most 1
    (the target) on average over the category shares ``mix``; the weight making every category cheapest
    where even that costs more (the target cannot be met: the cheapest map is the best one can do)."""
    means = np.asarray(means, dtype=np.float64)
    scaled_cost = np.asarray(scaled_cost, dtype=np.float64)
    shares = np.asarray(mix, dtype=np.float64)
    if shares.sum() <= 0:
        return 0.0
    shares = shares / shares.sum()

    def spend(weight: float) -> float:
        return float(shares @ scaled_cost[choose_per_prompt(means, scaled_cost, weight)])

    if spend(0.0) <= 1.0:
        return 0.0
    spread = float(np.ptp(means)) if means.size else 0.0
    cheapest_gap = float(np.min(scaled_cost[scaled_cost > scaled_cost.min()] - scaled_cost.min(), initial=np.inf))
    high = (spread + 1.0) / cheapest_gap if np.isfinite(cheapest_gap) else 1.0  # every category takes the cheapest
    low = 0.0
    if spend(high) > 1.0:
        return high
    for _ in range(iters):
        middle = 0.5 * (low + high)
        if spend(middle) > 1.0:
            low = middle
        else:
            high = middle
    return high
