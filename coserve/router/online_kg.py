"""Exploration by the value of information: the online knowledge gradient (``explore_policy: kg``, session 16).

Thompson exploration tries an expert where its posterior is wide, wherever that is and whatever the trial costs.
The knowledge gradient (after Ryzhov, Powell and Frazier's online KG policy) tries it where one more observation
is expected to improve future decisions by more than the trial gives up now. A request of category ``k`` goes
to the allowed expert maximising

    value_e + f * H * KG_e

* ``value_e``: the router's own objective for this request (its estimate less the cost weight times the cost in
  target units, what the greedy choice maximises), so a trial's price against the budget is in it;
* ``f``: the chance that an answer gets feedback, learnt online as the share of routed requests that received a
  score so far, ``(scores + 1) / (requests + 2)`` (a server does not know its users' rate in advance; saved with
  the state, so a restart and a cluster's replicas start from the learner's share);
* ``H * KG_e``: the expected improvement, summed over the next ``horizon`` requests, of the best objective of
  the requests of ``k`` from one more observation of cell ``(k, e)``. The next ``horizon`` requests hold
  ``horizon * share_k`` of ``k`` (``share_k`` its share of the last ``window`` requests); each is valued like
  the recent requests of ``k`` (their prediction rows, kept here, under today's means and weight), so
  ``H * KG_e = horizon / n * sum over the last n requests p of k (and this one) of KG_e(p)``, with
  ``KG_e(p) = s_e g(-|value_e(p) - max_{j != e} value_j(p)| / s_e)``, ``g(z) = z Phi(z) + phi(z)``. Averaging
  over the recent requests, not this one alone, keeps the choice from rating a cell by the one prompt it is
  cheapest to try it on.
* ``s_e``: the standard deviation of the change of the cell's mean from one more score. A Beta cell with counts
  ``n = alpha + beta`` and mean ``m`` moves by ``(s - m) / (n + 1)`` when a score ``s`` joins it (the cap on its
  counts scales both parameters alike, so it does not move the mean). A score in [0, 1] of predictive mean ``m``
  varies by at most ``m (1 - m)`` (a 0/1 score exactly so), so ``s_e = sqrt(m (1 - m)) / (n + 1)``: 0 for a
  certain cell, and large where an alarm just cut the cell to ``reset_count`` counts.

A choice that differs from the greedy one explores, under ``explore_cap`` as a hard cap (``online_choice``).

``kg_settle`` (session 16, off at 0): for that many routed requests after a downward alarm moved an expert, the
expert earns no bonus (it is still chosen where it is the greedy choice). The alarm cuts its cells to a few
pseudo-counts, the widest spread there is, so without it KG re-tests a truly shocked expert first (on a tuning
split, a fifth of the explorations after a true alarm), which keeps its traffic up and delays the recovery.

Pure numbers; knows nothing about feedback's source, the controller, HTTP or the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

from coserve.router.online_alarm import saved_counts

__all__ = ["POLICIES", "KGSettings", "KnowledgeGradient", "gain", "observation_spread"]

POLICIES = ("thompson", "kg")  # explore_policy: how a capped exploration picks its expert
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class KGSettings:
    """``router.online.explore_policy`` (``kg``: on), ``kg_horizon`` and ``kg_settle``."""

    on: bool = False
    horizon: float = 100.0
    settle: int = 0  # routed requests after a downward alarm during which the moved expert earns no bonus

    def __post_init__(self) -> None:
        if not 0.0 < self.horizon < math.inf:
            raise ValueError("kg_horizon must be a finite number of requests above 0")
        if not isinstance(self.settle, int) or isinstance(self.settle, bool) or self.settle < 0:
            raise ValueError("kg_settle must be a whole number of requests >= 0")


def observation_spread(mean: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The standard deviation of the change of a Beta cell's mean (``mean``, pseudo-counts ``count``) from one
    more score in [0, 1]: ``sqrt(m (1 - m)) / (n + 1)``."""
    m = np.clip(np.asarray(mean, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(m * (1.0 - m)) / (np.asarray(count, dtype=np.float64) + 1.0)


def gain(values: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """The knowledge gradient ``[..., E]`` of each expert on each row of ``values`` ``[..., E]`` (the objective of
    every expert), where one observation moves expert ``e``'s value with standard deviation ``spread[e]``: the
    expected rise of the row's best value, ``s g(-|value_e - max_{j != e} value_j| / s)`` (0 where ``s`` is 0)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[-1] < 2:
        return np.zeros_like(values)
    order = np.sort(values, axis=-1)
    top, second = order[..., -1:], order[..., -2:-1]
    best_other = np.where(values >= top, second, top)  # a tie at the top: the other one is as good
    s = np.broadcast_to(np.asarray(spread, dtype=np.float64), values.shape)
    safe = np.where(s > 0, s, 1.0)
    z = -np.abs(values - best_other) / safe
    g = z * ndtr(z) + INV_SQRT_2PI * np.exp(-0.5 * z * z)
    return np.where(s > 0, s * g, 0.0)


class KnowledgeGradient:
    """The recent requests' categories and prediction rows, the feedback share, and the KG bonus per expert."""

    def __init__(self, experts: int, window: int, settings: KGSettings | None = None) -> None:
        if experts <= 0 or window <= 0:
            raise ValueError("experts and window must be positive")
        self.settings = settings or KGSettings()
        self.rows = np.zeros((window if self.settings.on else 0, experts))  # the last ``window`` rows (a ring)
        self.category = np.full(len(self.rows), -1, dtype=np.int64)
        self.next = 0
        self.requests = 0  # routed requests (their categories joined the mix)
        self.scores = 0  # scores learnt (feedback and automatic signals)
        self.settling = np.zeros(experts, dtype=np.int64)  # per expert, routed requests left without a bonus

    @property
    def on(self) -> bool:
        return self.settings.on

    def joined(self, category: int, row: np.ndarray) -> None:
        """A routed request of ``category`` with its prediction row (its category's offline means in category mode)."""
        self.requests += 1
        np.subtract(self.settling, 1, out=self.settling, where=self.settling > 0)
        if len(self.rows):
            self.rows[self.next], self.category[self.next] = row, category
            self.next = (self.next + 1) % len(self.rows)

    def alarmed(self, expert: int) -> None:
        """A downward alarm moved ``expert``: no bonus for it over the next ``settle`` routed requests."""
        self.settling[expert] = self.settings.settle

    def scored(self) -> None:
        """A score was learnt."""
        self.scores += 1

    def feedback_share(self) -> float:
        """The share of routed requests that got a score so far (a uniform prior's mean: 0.5 before any)."""
        return min(1.0, (self.scores + 1.0) / (self.requests + 2.0))

    def bonus(
        self,
        category: int,
        row: np.ndarray,
        correction: np.ndarray,
        weight: float,
        cost: np.ndarray,
        spread: np.ndarray,
    ) -> np.ndarray:
        """``f * H * KG_e`` per expert ``[E]`` for a request of ``category`` whose corrected row is ``row`` (its
        prediction; the category's offline means in category mode); ``correction`` [E]: the category's posterior
        means less its offline means; ``weight``: the cost weight in force; ``cost``: the costs in target units;
        ``spread`` [E]: ``observation_spread`` of the category's cells. An expert still settling after a downward
        alarm (``kg_settle``) gets 0."""
        seen = self.category == category
        rows = np.vstack([self.rows[seen], row[None, :]])
        values = rows + correction[None, :] - weight * cost[None, :]
        sampled = int((self.category >= 0).sum()) + 1  # the requests the rows of ``category`` were drawn among
        total = gain(values, spread[None, :]).sum(axis=0)
        total = np.where(self.settling > 0, 0.0, total)
        return self.feedback_share() * self.settings.horizon * total / sampled

    def export_state(self) -> list[int]:
        """The routed requests and scores counted, as JSON values."""
        return [self.requests, self.scores]

    def export_settling(self) -> list[int]:
        """Per expert, the routed requests left without a bonus (``kg_settle``), as JSON values."""
        return [int(n) for n in self.settling]

    def restored(self, saved: Any, settling: Any = None) -> KnowledgeGradient:
        """A copy with the counts ``saved`` (None, a state saved before them: 0 and 0) and the ``settling`` requests
        (``export_settling``; None, a state saved before them: none, each at most ``settle``); ValueError where they
        do not fit. The recent rows are this process's own traffic, not saved: the copy keeps them (a cluster's
        replica adopts the owner's counts every half second and keeps valuing its own recent requests)."""
        fresh = KnowledgeGradient(self.rows.shape[1], max(1, len(self.rows)), self.settings)
        fresh.rows, fresh.category, fresh.next = self.rows.copy(), self.category.copy(), self.next
        if settling is not None:
            left = saved_counts(settling, len(fresh.settling), "kg settling requests")
            fresh.settling = np.minimum(left, self.settings.settle)
        if saved is None:
            return fresh
        try:
            counts = [float(c) for c in saved]
        except (TypeError, ValueError):
            raise ValueError("the state's feedback counts are malformed") from None
        if len(counts) != 2 or not all(math.isfinite(c) and c >= 0 and c % 1 == 0 for c in counts):
            raise ValueError("the state's feedback counts must be two whole numbers >= 0 (requests, scores)")
        fresh.requests, fresh.scores = int(counts[0]), int(counts[1])
        return fresh
