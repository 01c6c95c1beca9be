"""The online router's two pieces of state: a Beta posterior per (category, expert) and the budget controller.

* ``ScorePosterior`` keeps a Beta(alpha, beta) per (category, expert), started from the offline
  outcome table with ``prior_strength`` pseudo-counts per cell and updated with scores in [0, 1]. A
  score ``s`` adds ``s`` to alpha and ``1 - s`` to beta; a cell's total count is capped at ``max_count``
  (both parameters scaled down together), so old evidence fades slowly; ``rebase`` moves a changed
  expert's means and cuts its counts. With ``expert_rate`` > 0 it also keeps an offset per expert,
  pooled over categories and learnt faster than the cells (``estimate`` = cell mean + offset): a
  change of the whole expert moves every category's estimate at once, not only those with feedback.
* ``BudgetController`` holds the operator's target average cost with a dual variable, the cost weight,
  in two parts: a feed-forward ``base`` set from outside and an integral part moved by each served
  request's cost. Two settings (session 10, branch underspend) address the underspend while the weight
  sits at 0: ``debt`` lets the integral part fall below ``-base`` by up to ``step * debt`` (``debt``
  requests' worth of underspend at the target), so that underspend is paid back by the requests after
  it instead of being dropped; ``fine_weight`` shrinks the step in proportion to the effective weight
  below that weight (to ``FINE_LEAST`` of it at most), so a small weight moves finely. ``weight_floor``
  (session 11) makes the target two-sided: the effective weight may go down to ``-weight_floor``, so where
  weight 0 spends under the target the map buys dearer experts whose score is within ``|w| cost /
  target`` of the best (the Lagrangian of "average cost = target" rather than "<= target").
  ``cap`` (session 13) bounds the effective weight from above (``weight_cap``: past it a cheaper expert
  outscores every dearer one, so no choice changes): where a request's constraints allow only dear
  experts, each served request overspends and the integral part grew without bound (and was saved so,
  and took as long to come down once cheaper experts were allowed again). ``resume`` takes a saved
  weight within these bounds, clipping one above the cap with a warning.

Pure numbers; knows nothing about maps, routing, HTTP or the store (``coserve.router.online`` uses them).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence

import numpy as np

__all__ = ["CAP_SPAN", "FINE_LEAST", "BudgetController", "ScorePosterior", "weight_cap"]

log = logging.getLogger("coserve.router")

FINE_LEAST = 0.25  # fine_weight: the smallest share of the step a move keeps (at weight 0)
CAP_SPAN = 4.0  # score units a cost gap outweighs at the cap (a per-prompt row may spread beyond [0, 1])


def weight_cap(cost: Sequence[float] | np.ndarray, target: float) -> float:
    """The highest effective cost weight for experts of ``cost`` held to ``target``: ``CAP_SPAN`` over the
    smallest gap between two distinct costs, in target units (``CAP_SPAN`` where all cost the same). At
    ``1 / gap`` already a cheaper expert outscores every dearer one on scores in [0, 1] (the map is the
    cheapest allowed expert everywhere); the span leaves room for per-prompt rows, which spread wider."""
    gaps = np.diff(np.unique(np.asarray(cost, dtype=np.float64))) / float(target)
    return CAP_SPAN / float(gaps.min()) if gaps.size else CAP_SPAN


class ScorePosterior:
    """A Beta posterior of each expert's score on each category."""

    def __init__(
        self, offline: np.ndarray, prior_strength: float = 20.0, max_count: float = 30.0, expert_rate: float = 0.0
    ) -> None:
        offline = np.asarray(offline, dtype=np.float64)
        if offline.ndim != 2:
            raise ValueError(f"the offline score table must be [categories, experts], got {offline.shape}")
        if prior_strength <= 0 or max_count < prior_strength:
            raise ValueError("prior_strength must be > 0 and max_count >= prior_strength")
        if not 0.0 <= expert_rate < 1.0:
            raise ValueError("expert_rate must be in [0, 1)")
        mean = np.clip(np.nan_to_num(offline, nan=0.5), 0.0, 1.0)
        self.alpha = prior_strength * mean + 1e-6  # a tiny floor keeps Beta draws defined at 0 and 1
        self.beta = prior_strength * (1.0 - mean) + 1e-6
        self.max_count = float(max_count)
        self.expert_rate = float(expert_rate)
        self.offset = np.zeros(offline.shape[1])  # per expert, added to every category's cell mean

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.alpha.shape[0]), int(self.alpha.shape[1]))

    def mean(self) -> np.ndarray:
        """Posterior mean score ``[K, E]``."""
        return np.asarray(self.alpha / (self.alpha + self.beta))

    def estimate(self) -> np.ndarray:
        """What the router routes by ``[K, E]``: each cell's mean plus its expert's offset, within [0, 1]."""
        return np.clip(self.mean() + self.offset[None, :], 0.0, 1.0)

    def count(self) -> np.ndarray:
        """Pseudo-counts behind each mean ``[K, E]``."""
        return np.asarray(self.alpha + self.beta)

    def update(self, category: int, expert: int, score: float) -> float:
        """Add one observed score in [0, 1]; returns its residual against the estimate it was predicted
        with. The expert's offset moves by ``expert_rate`` times the residual, and the cell learns the
        score less the offset it was predicted with. ValueError for a score out of range."""
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"a score must be in [0, 1], got {score}")
        offset = float(self.offset[expert])
        cell = float(self.alpha[category, expert] / (self.alpha[category, expert] + self.beta[category, expert]))
        residual = score - min(1.0, max(0.0, cell + offset))
        if self.expert_rate > 0:
            self.offset[expert] = offset + self.expert_rate * residual
            score = min(1.0, max(0.0, score - offset))
        self.alpha[category, expert] += score
        self.beta[category, expert] += 1.0 - score
        total = self.alpha[category, expert] + self.beta[category, expert]
        if total > self.max_count:
            shrink = self.max_count / total
            self.alpha[category, expert] *= shrink
            self.beta[category, expert] *= shrink
        return residual

    def rebase(self, expert: int, shift: float | np.ndarray, count: float) -> None:
        """An expert changed: move its mean in every category by ``shift`` (one for all, or one per category;
        clipped to [0, 1]) and cut each of its cells' pseudo-counts to at most ``count``, so new feedback
        soon outweighs the old."""
        mean = np.clip(self.mean()[:, expert] + shift, 0.0, 1.0)
        total = np.minimum(self.count()[:, expert], count)
        self.alpha[:, expert] = total * mean + 1e-6
        self.beta[:, expert] = total * (1.0 - mean) + 1e-6

    def sample(self, category: int, rng: np.random.Generator) -> np.ndarray:
        """One Thompson draw of every expert's score on ``category`` ``[E]``."""
        return np.clip(rng.beta(self.alpha[category], self.beta[category]) + self.offset, 0.0, 1.0)


class BudgetController:
    """The cost weight, moved by each served request's cost toward the operator's target."""

    def __init__(
        self,
        target: float,
        step: float = 0.005,
        weight: float = 0.0,
        window: int = 500,
        debt: float = 0.0,
        fine_weight: float = 0.0,
        weight_floor: float = 0.0,
        cap: float = math.inf,
    ) -> None:
        if target <= 0 or step <= 0 or window <= 0:
            raise ValueError("target, step and window must be positive")
        if not (debt >= 0 and fine_weight >= 0):
            raise ValueError("debt and fine_weight must be >= 0")
        if not weight_floor >= 0:
            raise ValueError("weight_floor must be >= 0 (the weight's floor is minus it)")
        if not cap > 0:
            raise ValueError("cap must be above 0 (the effective weight's ceiling)")
        self.target = float(target)
        self.step = float(step)
        self.debt = float(debt)  # underspend carried below the floor, in requests at the target
        self.fine_weight = float(fine_weight)  # below this effective weight the step shrinks (0: never)
        self.weight_floor = float(weight_floor)  # the effective weight's floor is -weight_floor (0: one-sided)
        self.cap = float(cap)  # the effective weight's ceiling (weight_cap; inf: none)
        self.base = 0.0  # the feed-forward part: the weight the recent category mix needs (0 without one)
        self.weight = self._bounded(float(weight))  # the integral part, moved by the realised cost
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def floor(self) -> float:
        """The lowest integral part: ``-base - weight_floor`` (the lowest effective weight) less the debt."""
        return -self.base - self.weight_floor - self.step * self.debt

    @property
    def ceiling(self) -> float:
        """The highest integral part: ``cap - base`` (the effective weight at most ``cap``)."""
        return self.cap - self.base

    def _bounded(self, weight: float) -> float:
        return min(self.ceiling, max(self.floor, weight))

    @property
    def effective(self) -> float:
        """The cost weight the map is solved with: the feed-forward part plus the integral part, at least
        ``-weight_floor``."""
        return max(-self.weight_floor, self.base + self.weight)

    def set_base(self, base: float) -> None:
        """A new feed-forward weight; the integral part stays within the new floor and ceiling."""
        self.base = float(base)
        self.weight = self._bounded(self.weight)

    def resume(self, weight: float, base: float | None = None) -> None:
        """Take a saved integral part and feed-forward part (None: keep this one's) within this controller's
        bounds: a base or a weight above the cap is clipped to it with a warning (a saved 1e300 is no reason
        to refuse a start); one below its floor (another ``weight_floor`` or debt) is raised to it quietly."""
        if base is not None:
            self.base = min(self.cap, max(-self.weight_floor, float(base)))
        if weight > self.ceiling or (base is not None and base > self.cap):
            log.warning(
                "online state: the saved cost weight (integral %g, feed-forward %s) is beyond this router's cap "
                "%g (past it no choice changes); resumed within it",
                weight, "not resumed" if base is None else f"{base:g}", self.cap,
            )  # fmt: skip
        self.weight = self._bounded(float(weight))

    def observe(self, cost: float) -> float:
        """Record one served request's cost; returns the new integral weight."""
        self.recent.append(float(cost))
        move = self.step * (cost / self.target - 1.0)
        if self.fine_weight > 0:
            move *= min(1.0, max(FINE_LEAST, self.effective / self.fine_weight))
        self.weight = self._bounded(self.weight + move)
        return self.weight

    def realised(self) -> float | None:
        """Average cost over the sliding window (None before the first request)."""
        return float(np.mean(self.recent)) if self.recent else None
