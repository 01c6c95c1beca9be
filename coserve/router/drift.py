"""Noticing change in live traffic: a shift in an expert's scores, and a shift in the category mix.

* ``ChangeDetector`` runs a two-sided CUSUM per expert on feedback residuals, pooled over categories:
  ``up = max(0, up + r - drift)``, ``down = max(0, down - r - drift)``. When either passes
  ``threshold`` the expert has changed; the estimated shift is the mean residual since that side last
  stood at zero (the CUSUM's change-point estimate), and both sides restart. ``drift`` is half the
  smallest shift worth noticing; ``threshold`` sets how rare false alarms are (a larger one waits for more evidence).
* What a residual is measured against (``ChangeSettings.baseline``): ``posterior``, the posterior mean
  the score was predicted with (offline table plus feedback so far), so a table that was wrong from the
  start also drives the CUSUM until the feedback has corrected it; or ``feedback``, the running mean of
  the cell's own earlier feedback (``FeedbackBaseline``: no offline prior in it, tested only once the
  cell holds ``min_feedback`` scores), which a constant table error does not move, so only a change in
  the expert's own scores over time does.
* ``ChangeSettings.model``: ``flat`` (this CUSUM), or ``proportional`` (``drift_weighted``: each residual
  weighed by the score it was expected to have, session 12).
* ``ChangeSettings.reference``: ``zero`` (residuals tested as they are), or ``running`` (``drift_reference``:
  less a slow running mean of the expert's own residuals, so the router's selection bias is no change;
  session 12, branch bias12). Either change model reads its residuals so.
* ``ChangeSettings.anchor`` and ``fast_threshold`` (session 13, branch adapt13b; ``drift_fast``): residuals read
  against the estimate at the start of the down side's climb, and a second, down-only CUSUM with its own drift
  and level; both off by default.
* ``weight_for_mix`` is the cost weight a map needs so that its expected cost over a category mix is at
  most the target: the smallest weight >= 0 whose per-category choices cost <= 1 in target units
  (bisection over the weight; the cost of the weighted map only falls as the weight grows).

Pure numbers; knows nothing about posteriors' storage, HTTP or the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from coserve.router.drift_fast import ClimbAnchor, FastLane, saved_statistic
from coserve.router.drift_reference import REFERENCE_QUIET, REFERENCES, RunningReference
from coserve.router.mapping import choose_per_prompt

__all__ = [
    "BASELINES",
    "CHANGE_MODELS",
    "ChangeDetector",
    "ChangeSettings",
    "FeedbackBaseline",
    "export_change",
    "new_baseline",
    "new_reference",
    "restore_change",
    "weight_for_mix",
]

_SIDES = ("up", "down")
BASELINES = ("posterior", "feedback")  # what a residual is measured against: see the module docstring
CHANGE_MODELS = ("flat", "proportional")  # how a residual counts: alike, or by its expected score (drift_weighted)
FEEDBACK_MEMORY = 200.0  # a cell's feedback mean weighs each new score at least 1 / this (slow forgetting)


@dataclass(frozen=True)
class ChangeSettings:
    """How a changed expert is noticed (``ChangeDetector``) and how much old evidence survives it."""

    drift: float = 0.05  # half the smallest shift in an expert's scores worth noticing
    threshold: float = 16.0  # the CUSUM's alarm level (residual units): larger waits for more evidence
    reset_count: float = 5.0  # pseudo-counts an expert's cells keep after an alarm
    move_mean: bool = True  # also move the expert's means by the estimated shift
    baseline: str = "posterior"  # residuals against the posterior mean, or the cell's own feedback mean
    min_feedback: int = 20  # feedback baseline: scores a cell needs before its residuals are tested
    upward: bool = True  # an upward alarm also rebases the expert (False: only a downward one does)
    shift_share: float = 1.0  # the share of the estimated shift the means move by (less: a false alarm costs less)
    model: str = "flat"  # each residual alike, or weighed by its expected score (drift_weighted.ProportionalDetector)
    variance_floor: float = 0.0  # proportional: > 0 divides each increment by the score's variance, at least this
    reference: str = "zero"  # residuals tested against 0, or the expert's running mean (drift_reference, session 12)
    reference_memory: float = 1000.0  # running: the reference's memory, in feedbacks
    anchor: bool = False  # residuals read against the estimate when the down side left 0 (drift_fast, session 13)
    fast_drift: float = 0.15  # the fast lane's drift (drift_fast.FastLane)
    fast_threshold: float = 0.0  # the fast lane's level (0: no fast lane)
    shift_pool: float = 0.0  # a drop moves each category by its own residuals shrunk to the pooled shift (online_shift)

    def __post_init__(self) -> None:
        if self.model not in CHANGE_MODELS:
            raise ValueError(f"model must be one of {CHANGE_MODELS}, not {self.model!r}")
        if self.model == "proportional" and self.baseline != "posterior":
            raise ValueError("the proportional change model weighs residuals against the posterior: baseline posterior")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, not {self.baseline!r}")
        if self.min_feedback < 1:
            raise ValueError("min_feedback must be >= 1")
        if not 0.0 <= self.shift_share <= 1.0:
            raise ValueError("shift_share must be in [0, 1]")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, not {self.reference!r}")
        if not self.reference_memory >= 1:
            raise ValueError("reference_memory must be >= 1 (feedbacks)")
        if not (self.fast_drift >= 0 and self.fast_threshold >= 0):
            raise ValueError("fast_drift and fast_threshold must be >= 0")
        if (self.anchor or self.fast_threshold > 0) and (self.model != "flat" or self.baseline != "posterior"):
            raise ValueError("anchor and the fast lane read the flat model's residuals against the posterior")
        if not (self.shift_pool >= 0 and math.isfinite(self.shift_pool)):
            raise ValueError("shift_pool must be a finite number >= 0")
        plain = self.model == "flat" and self.baseline == "posterior" and self.reference == "zero"
        if self.shift_pool > 0 and not (plain and self.move_mean and not self.anchor and self.fast_threshold == 0):
            raise ValueError(
                "shift_pool splits the plain detector's move by category: it needs the flat model against the"
                " posterior, reference zero, move_mean, and no anchor or fast lane"
            )


class FeedbackBaseline:
    """Each (category, expert) cell's running mean of its own feedback, the reference of its residuals.

    A constant error of the offline table is no change: the feedback mean starts from the expert's
    actual scores, not the table. Each score is compared with the mean of the cell's earlier scores
    (once there are ``min_feedback`` of them) and then joins it; the count is capped at ``memory``, so
    the mean forgets slowly. After an alarm the expert's means are forgotten (``forget``): the scores
    after the change build the new reference.
    """

    def __init__(self, categories: int, experts: int, min_feedback: int = 20, memory: float = FEEDBACK_MEMORY) -> None:
        if categories <= 0 or experts <= 0 or min_feedback < 1 or memory < 1:
            raise ValueError("categories, experts, min_feedback and memory must be positive")
        self.min_feedback, self.memory = int(min_feedback), float(memory)
        self.mean = np.zeros((categories, experts))
        self.count = np.zeros((categories, experts))

    def residual(self, category: int, expert: int, score: float) -> float | None:
        """``score`` minus the cell's feedback mean (None while it holds fewer than ``min_feedback``
        scores); the score then joins the mean."""
        count, mean = self.count[category, expert], self.mean[category, expert]
        residual = float(score - mean) if count >= self.min_feedback else None
        count = min(count + 1.0, self.memory)
        self.mean[category, expert] = mean + (score - mean) / count
        self.count[category, expert] = count
        return residual

    def forget(self, expert: int) -> None:
        """``expert`` changed: its cells start a new reference from the scores that follow."""
        self.mean[:, expert] = 0.0
        self.count[:, expert] = 0.0

    def export_state(self) -> dict[str, Any]:
        """The means and counts as JSON values."""
        return {"feedback_mean": self.mean.tolist(), "feedback_count": self.count.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load ``export_state``'s output; ValueError (nothing changed) where it does not fit."""
        try:
            mean = np.asarray(state["feedback_mean"], dtype=np.float64)
            count = np.asarray(state["feedback_count"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the feedback baseline's state is incomplete or malformed: {exc}") from None
        fits = mean.shape == self.mean.shape and count.shape == self.count.shape
        if not fits or not (np.isfinite(mean).all() and np.isfinite(count).all()):
            raise ValueError("the feedback baseline's state has another shape or impossible values")
        if (mean < 0).any() or (mean > 1).any() or (count < 0).any() or (count > self.memory).any():
            raise ValueError("the feedback baseline's state has another shape or impossible values")
        self.mean, self.count = mean, count


class ChangeDetector:
    """A two-sided CUSUM per expert on the residuals of its feedback (less ``reference``'s running mean
    where one is given: ``drift_reference``)."""

    def __init__(
        self, experts: int, drift: float = 0.05, threshold: float = 4.0, reference: RunningReference | None = None
    ) -> None:
        if experts <= 0 or drift < 0 or threshold <= 0:
            raise ValueError("experts and threshold must be positive and drift >= 0")
        self.drift, self.threshold = float(drift), float(threshold)
        self.reference = reference
        self.anchor: ClimbAnchor | None = None  # drift_fast: residuals against the climb's start (None: off)
        self.fast: FastLane | None = None  # drift_fast: a second, down-only CUSUM (None: off)
        # per side: the CUSUM statistic, and the sum and number of residuals since it last stood at zero
        self.stat = {side: np.zeros(experts) for side in _SIDES}
        self.total = {side: np.zeros(experts) for side in _SIDES}
        self.count = {side: np.zeros(experts) for side in _SIDES}

    def observe(self, expert: int, residual: float, estimate: float = 1.0) -> float | None:
        """Add one residual of ``expert`` (against ``estimate``, which this flat model does not read); the
        estimated shift where that completes an alarm, else None."""
        residual = self.against_reference(expert, residual)
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
        fast = None if self.fast is None else self.fast.observe(expert, residual)
        if fast is not None:
            self.reset(expert)
        return fast

    def against_reference(self, expert: int, residual: float) -> float:
        """``residual`` less ``expert``'s reference (itself without one). The residual joins the reference
        where it arrives while both sides stand below ``REFERENCE_QUIET`` times the alarm level."""
        if self.reference is None:
            return residual
        against = residual - self.reference.value(expert)
        quiet = REFERENCE_QUIET * self.threshold
        if self.stat["up"][expert] < quiet and self.stat["down"][expert] < quiet:
            self.reference.learn(expert, residual)
        return against

    def rebased(self, expert: int) -> None:
        """An alarm moved ``expert``'s means: its reference restarts at 0."""
        if self.reference is not None:
            self.reference.forget(expert)

    def reset(self, expert: int) -> None:
        """Start ``expert``'s statistics afresh."""
        for side in _SIDES:
            self.stat[side][expert] = self.total[side][expert] = self.count[side][expert] = 0.0
        if self.fast is not None:
            self.fast.reset(expert)

    def export_state(self) -> dict[str, Any]:
        """The statistics (and references) as JSON values."""
        saved = {f"{name}_{side}": values[side].tolist() for name, values in self._arrays() for side in _SIDES}
        saved.update({} if self.fast is None else self.fast.export_state())
        return saved if self.reference is None else {**saved, **self.reference.export_state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load ``export_state``'s output; ValueError (nothing changed) where it does not fit."""
        arrays = dict(self._arrays())
        loaded = {}
        for name, values in arrays.items():
            for side in _SIDES:
                key, shape, signed = f"{name}_{side}", values[side].shape, name == "total"
                loaded[(name, side)] = saved_statistic(state, key, shape, signed, "the change detector's state")
        if self.fast is not None:
            self.fast.restore(state)  # checked before anything else changes
        for (name, side), array in loaded.items():
            arrays[name][side] = array
        if self.reference is not None:
            self.reference.restore(state)  # a state without (fitting) references leaves them at 0

    def _arrays(self) -> tuple[tuple[str, dict[str, np.ndarray]], ...]:
        return (("stat", self.stat), ("total", self.total), ("count", self.count))


def new_baseline(change: ChangeSettings | None, categories: int, experts: int) -> FeedbackBaseline | None:
    """The feedback-only means a router with ``change`` measures residuals against (None: the posterior's)."""
    if change is None or change.baseline != "feedback":
        return None
    return FeedbackBaseline(categories, experts, change.min_feedback)


def new_reference(change: ChangeSettings, experts: int) -> RunningReference | None:
    """The running reference ``change`` names (None: residuals tested against 0)."""
    return RunningReference(experts, change.reference_memory) if change.reference == "running" else None


def export_change(detector: ChangeDetector, baseline: FeedbackBaseline | None) -> dict[str, Any]:
    """The detector's statistics, and the baseline they were measured against, as JSON values."""
    kind = {"baseline": "posterior"} if baseline is None else {"baseline": "feedback", **baseline.export_state()}
    return {**detector.export_state(), **kind}


def restore_change(
    saved: Any, change: ChangeSettings | None, categories: int, experts: int
) -> tuple[ChangeDetector | None, FeedbackBaseline | None]:
    """A detector (and feedback baseline) for ``change``, loaded from ``saved`` (``export_change``'s
    output) where that was measured against the same baseline; fresh where nothing was saved or it was
    measured against the other one (a state saved before baselines existed was against the posterior).
    ValueError where the saved statistics do not fit; nothing is shared with the router until it returns."""
    if change is None:
        return None, None
    detector = ChangeDetector(experts, change.drift, change.threshold, new_reference(change, experts))
    detector.anchor = ClimbAnchor(categories, experts) if change.anchor else None
    detector.fast = FastLane(experts, change.fast_drift, change.fast_threshold) if change.fast_threshold > 0 else None
    baseline = new_baseline(change, categories, experts)
    if isinstance(saved, dict) and saved.get("baseline", "posterior") == change.baseline:
        detector.restore(saved)
        if baseline is not None:
            baseline.restore(saved)
    return detector, baseline


def weight_for_mix(
    means: np.ndarray, scaled_cost: np.ndarray, mix: np.ndarray, iters: int = 40, least: float = 0.0
) -> float:
    """Smallest weight >= ``least`` at which the map maximising ``means - weight * scaled_cost`` costs at
    most 1 (the target) on average over the category shares ``mix``; the weight making every category
    cheapest where even that costs more (the target cannot be met: the cheapest map is the best one can
    do). ``least`` < 0 (a two-sided target): where weight 0 spends under the target, the weight between
    ``least`` and 0 at which the map's cost comes down to the target (``least`` where even it spends less)."""
    means = np.asarray(means, dtype=np.float64)
    scaled_cost = np.asarray(scaled_cost, dtype=np.float64)
    shares = np.asarray(mix, dtype=np.float64)
    if shares.sum() <= 0:
        return 0.0
    shares = shares / shares.sum()

    def spend(weight: float) -> float:
        return float(shares @ scaled_cost[choose_per_prompt(means, scaled_cost, weight)])

    if spend(0.0) <= 1.0:
        return 0.0 if least >= 0.0 else _bisect(spend, float(least), 0.0, iters)
    spread = float(np.ptp(means)) if means.size else 0.0
    cheapest_gap = float(np.min(scaled_cost[scaled_cost > scaled_cost.min()] - scaled_cost.min(), initial=np.inf))
    high = (spread + 1.0) / cheapest_gap if np.isfinite(cheapest_gap) else 1.0  # every category takes the cheapest
    if spend(high) > 1.0:
        return high
    return _bisect(spend, 0.0, high, iters)


def _bisect(spend: Callable[[float], float], low: float, high: float, iters: int) -> float:
    """The smallest weight in [low, high] whose ``spend`` is <= 1, given ``spend(high)`` <= 1 and the
    spend falling as the weight grows (``low`` itself where it already spends <= 1)."""
    if spend(low) <= 1.0:
        return low
    for _ in range(iters):
        middle = 0.5 * (low + high)
        if spend(middle) > 1.0:
            low = middle
        else:
            high = middle
    return high
