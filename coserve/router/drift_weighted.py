"""A risk-adjusted CUSUM: an expert's change judged against each feedback's own expected score (session 12).

``drift.ChangeDetector`` (the ``flat`` change model) adds every residual ``r = s - e`` alike. Scores are
mostly 0 or 1, and a drop of an expert's scores (the shocked expert's fall by 0.3, clipped at 0) cannot
show on a prompt it was expected to fail (``e`` near 0): there ``s`` stays near 0. Those residuals only
dilute the drop and add the offline table's noise. The ``proportional`` model (``ProportionalDetector``)
weighs each feedback by what a change could show on it, after the risk-adjusted CUSUM of Steiner et al.
(2000), with a Gaussian score of constant variance:

* down side: "the expected score fell from ``e`` to ``(1 - rho) e``" against "no change". The
  log-likelihood ratio is ``rho e (-r - rho e / 2) / variance``; divided by ``rho / variance`` and with
  the design drop ``rho = 2 drift``, the increment is ``e (-r) - drift e^2``; ``e = 0`` adds nothing.
  With ``variance_floor`` > 0 the variance is the Bernoulli one of a score expected at ``e``,
  ``max(e (1 - e), variance_floor)``, and the increment is divided by it over 1/4 (its value at
  ``e = 1/2``, so the statistic keeps the constant-variance scale there).
* up side: "the expected score rose from ``e`` to ``e + rho (1 - e)``": weight ``1 - e`` in place of ``e``,
  ``(1 - e) r - drift (1 - e)^2``; a rise shows on the prompts it used to fail.
* at an alarm, the estimated change is ``rho_hat = sum(w * signed r) / sum(w^2)`` over the feedback since
  that side last stood at 0 (``w`` the side's weight; the least-squares fit of ``r = -rho e``), within
  [0, 1]; ``observe`` returns ``-rho_hat`` for a drop and ``+rho_hat`` for a rise, and ``cell_shift`` turns
  it into each cell's move: ``-rho_hat x mean`` (a drop) or ``+rho_hat x (1 - mean)`` (a rise), where the
  flat model moves every cell by the same shift.

``restore_detector`` builds the detector a ``ChangeSettings`` names, resuming a saved state of the same
model; a state saved under the other model resumes with a fresh detector and a warning.
Pure numbers; knows nothing about posteriors' storage, HTTP or the store.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from coserve.router.drift import ChangeDetector, ChangeSettings, FeedbackBaseline, new_reference, restore_change
from coserve.router.drift_reference import RunningReference

__all__ = ["ProportionalDetector", "cell_shift", "restore_detector"]

log = logging.getLogger("coserve.router")


class ProportionalDetector(ChangeDetector):
    """A two-sided risk-adjusted CUSUM per expert: each feedback weighed by its expected score ``e``.

    ``total`` holds, per side, the sum of ``weight x residual`` and ``count`` the sum of ``weight^2``
    since the side last stood at 0 (the flat detector's residual sum and count, with weight 1).
    ``variance_floor`` > 0: each increment is divided by ``4 max(e (1 - e), variance_floor)``."""

    model = "proportional"

    def __init__(
        self,
        experts: int,
        drift: float = 0.05,
        threshold: float = 4.0,
        variance_floor: float = 0.0,
        reference: RunningReference | None = None,
    ) -> None:
        super().__init__(experts, drift, threshold, reference)
        if not 0.0 <= variance_floor <= 0.25:
            raise ValueError("variance_floor must be in [0, 0.25]")
        self.variance_floor = float(variance_floor)

    def observe(self, expert: int, residual: float, estimate: float = 1.0) -> float | None:
        """Add one feedback of ``expert``: its residual against ``estimate``, the score it was expected to
        have (within [0, 1]). The signed share of change (``-rho_hat``: a drop, ``+rho_hat``: a rise) where
        that completes an alarm, else None."""
        residual = self.against_reference(expert, residual)  # less the running reference where there is one
        expected = min(1.0, max(0.0, float(estimate)))
        scale = 4.0 * max(expected * (1.0 - expected), self.variance_floor) if self.variance_floor > 0 else 1.0
        for side, weight, signed in (("up", 1.0 - expected, residual), ("down", expected, -residual)):
            gain = (weight * signed - self.drift * weight * weight) / scale
            value = self.stat[side][expert] + gain
            if value <= 0.0:
                self.stat[side][expert] = self.total[side][expert] = self.count[side][expert] = 0.0
            else:
                self.stat[side][expert] = value
                self.total[side][expert] += weight * residual
                self.count[side][expert] += weight * weight
        for side, sign in (("up", 1.0), ("down", -1.0)):
            if self.stat[side][expert] > self.threshold:
                fitted = sign * self.total[side][expert] / self.count[side][expert] if self.count[side][expert] else 0.0
                self.reset(expert)
                return sign * min(1.0, max(0.0, float(fitted)))
        return None

    def export_state(self) -> dict[str, Any]:
        """The statistics as JSON values, marked with the model they were measured under."""
        return {**super().export_state(), "model": self.model}


def cell_shift(model: str, shift: float, means: np.ndarray) -> float | np.ndarray:
    """How far each of an alarmed expert's cells moves, given the detector's ``shift`` and the cells'
    ``means`` [K]: the shift itself (``flat``), or ``shift x mean`` for a drop and ``shift x (1 - mean)``
    for a rise (``proportional``)."""
    if model == "flat":
        return shift
    means = np.asarray(means, dtype=np.float64)
    return shift * (means if shift < 0 else 1.0 - means)


def restore_detector(
    saved: Any, change: ChangeSettings | None, categories: int, experts: int
) -> tuple[ChangeDetector | None, FeedbackBaseline | None]:
    """The detector (and feedback baseline) ``change`` names, loaded from ``saved`` where that was measured
    under the same change model (a state saved before models existed was ``flat``); fresh, with a warning,
    where it was saved under the other model. ValueError where the saved statistics do not fit."""
    if change is None:
        return None, None
    if saved is not None and not isinstance(saved, dict):
        raise ValueError(f"the change detector's state is not an object: {type(saved).__name__}")
    if isinstance(saved, dict) and saved.get("model", "flat") != change.model:
        log.warning(
            "the change detector's state was saved under the %s change model, this router uses %s: "
            "its statistics start afresh", saved.get("model", "flat"), change.model,
        )  # fmt: skip
        saved = None
    if change.model == "flat":
        return restore_change(saved, change, categories, experts)
    reference = new_reference(change, experts)
    detector = ProportionalDetector(experts, change.drift, change.threshold, change.variance_floor, reference)
    if isinstance(saved, dict):
        detector.restore(saved)
    return detector, None
