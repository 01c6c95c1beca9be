"""The change detector's running reference: a self-starting CUSUM, so the router's own bias is no change (session 12).

Where the router chooses, an expert is picked on the prompts whose estimate is high, so there its scores
fall short of the estimate on average (the winner's curse): measured on the tuning runs before the shock,
each expert's mean residual is -0.005 to -0.048 (docs/data/adapt-calibration-s12.json). With drift 0.075
that bias eats up to half of the CUSUM's downward drift, and most of the defaults' false alarms are drops.

``RunningReference`` (``ChangeSettings.reference`` ``running``) keeps, per expert, a slow running mean of
its own residuals (pooled over categories), and the CUSUM reads each residual less that mean: a
self-starting CUSUM, whose increment on the down side is ``-(r - ref) - drift`` (up: ``(r - ref) -
drift``). The mean starts at 0 and weighs each residual ``1 / min(count, memory)``: the plain mean of
the first ``memory`` residuals, then an exponentially weighted one with memory ``memory`` feedbacks.
It is read only once it holds ``min(REFERENCE_MIN_FEEDBACK, memory)`` residuals (before that: 0, as
without it).

So that a real change is not learnt into the reference, a residual joins it only where it arrives while
the expert's CUSUM shows no evidence of a change: both sides below ``REFERENCE_QUIET`` times the alarm
level, judged before the residual is added (so the residual itself does not decide whether it is learnt,
and what is learnt is an unbiased sample of the residuals while nothing has changed). Why not "both sides
at 0": with scores of mostly 0 or 1 the residuals are rarely within the drift of 0, so one side almost
always stands above 0 (docs/data/adapt-reference-s12b.json: the share of feedback arriving so on the tuning runs).
After an alarm moves the expert's means (``forget``), its reference restarts at 0.

Pure numbers; knows nothing about the posteriors, HTTP or the store.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["REFERENCES", "REFERENCE_MIN_FEEDBACK", "REFERENCE_QUIET", "RunningReference"]

log = logging.getLogger("coserve.router")

REFERENCES = ("zero", "running")  # what the CUSUM measures residuals against: 0, or the expert's running mean
REFERENCE_MIN_FEEDBACK = 100  # residuals a reference needs before it is read (at most its memory)
REFERENCE_QUIET = 0.5  # a residual is learnt while both CUSUM sides stand below this share of the alarm level


class RunningReference:
    """Per expert, the running mean of its residuals, learnt while its CUSUM is quiet."""

    def __init__(self, experts: int, memory: float = 1000.0) -> None:
        if experts <= 0 or not memory >= 1:
            raise ValueError("experts must be positive and the reference's memory >= 1")
        self.memory = float(memory)
        self.least = min(float(REFERENCE_MIN_FEEDBACK), self.memory)
        self.mean = np.zeros(experts)
        self.count = np.zeros(experts)

    def value(self, expert: int) -> float:
        """The reference ``expert``'s residuals are measured against (0 while it holds too few)."""
        return float(self.mean[expert]) if self.count[expert] >= self.least else 0.0

    def learn(self, expert: int, residual: float) -> None:
        """``residual`` joins ``expert``'s running mean, weighed ``1 / min(count, memory)``."""
        count = min(self.count[expert] + 1.0, self.memory)
        self.mean[expert] += (residual - self.mean[expert]) / count
        self.count[expert] = count

    def forget(self, expert: int) -> None:
        """``expert``'s means moved: its reference restarts at 0."""
        self.mean[expert] = self.count[expert] = 0.0

    def export_state(self) -> dict[str, Any]:
        """The means and counts as JSON values."""
        return {"reference": self.mean.tolist(), "reference_count": self.count.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load ``export_state``'s output from a detector's saved state. A state without references (saved
        before them, or without a running reference) leaves them at 0; one whose references do not fit
        leaves them at 0 with a warning. Never raises: the rest of the detector's state still resumes."""
        if "reference" not in state and "reference_count" not in state:
            return
        try:
            mean = np.asarray(state["reference"], dtype=np.float64)
            count = np.asarray(state["reference_count"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            mean = count = np.zeros(0)
        fits = mean.shape == self.mean.shape and count.shape == self.count.shape
        if not fits or not (np.isfinite(mean).all() and np.isfinite(count).all()):
            fits = False
        elif (np.abs(mean) > 1).any() or (count < 0).any():
            fits = False
        if not fits:
            log.warning("the change detector's saved references do not fit this router: they restart at 0")
            return
        self.mean, self.count = mean, np.minimum(count, self.memory)  # a shorter memory caps the saved counts
