"""The online router's per-request choice: the map's expert, or an exploration, for one request.

``OnlineChoice`` is the base of ``OnlineRouter`` (``coserve.router.online``), which builds every field it reads
(declared below) and holds the learning from feedback, the map's re-solve and the saved state. A request of
category ``k`` goes to the expert the versioned ``MapSnapshot`` in force assigns to ``k``. Where its constraints
forbid that expert, or in prompt mode with a prediction (the row ``S[k] + prompt_weight * (pred - S[k])``,
corrected by ``neighbours`` where set and the prompt's vector is given), it goes to the allowed expert maximising
the snapshot's means, shifted by the row's offset from its category, less the snapshot's weight times the cost
in target units. Then each of these, in order, may route it elsewhere, the decision counting as exploring:

* Thompson sampling: a draw from each posterior replaces the mean, and a choice that differs from the greedy one
  explores, allowed only while the share of exploring decisions over the last ``window`` requests stays under
  ``explore_cap`` (so no ``window`` consecutive requests hold more than ``explore_cap * window`` explorations,
  rounded up); beyond the cap, where the cost weight is <= 0 with ``explore_at_zero``, and for an expert an
  alarm just moved (``online_alarm``: at a weight <= 0, or at any with ``alarm_explore_any_weight``);
  with ``explore_policy: kg`` (``online_kg``) the exploration under the cap maximises the objective plus each
  expert's value of information instead of a draw (the other two keep Thompson's draw);
* ``probe`` (``online_probe``): a request sent to an expert the change detector suspects, within a score margin;
* ``confirm`` (``online_confirm``): a request sent to an expert whose downward alarm is on trial, where its
  pre-alarm means would have chosen it.

Each decided request joins the recent mix the feed-forward weight reads (``online_mix``) and counts down the
alarm exploration's requests. Pure numbers, seeded randomness; knows nothing about feedback, the controller's
updates, saved state, HTTP or the store.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from coserve.router.drift import ChangeDetector
from coserve.router.online_alarm import AlarmExploration
from coserve.router.online_confirm import ChangeConfirm
from coserve.router.online_kg import KnowledgeGradient, observation_spread
from coserve.router.online_map import Decision, MapSnapshot, solve_weighted
from coserve.router.online_mix import RecentMix
from coserve.router.online_model import BudgetController, ScorePosterior
from coserve.router.online_neighbours import NeighbourMemory
from coserve.router.online_probe import ChangeProbe

__all__ = ["OnlineChoice"]


class OnlineChoice:
    """Choosing an expert per request from the map in force (``OnlineRouter``'s base; it sets every field)."""

    granularity: str  # "category" or "prompt": what a decision is made per
    prompt_weight: float  # the share of a prompt's predicted offset from its category that counts, in [0, 1]
    offline: np.ndarray  # [K, E] S: the table the posteriors started from
    cost: np.ndarray  # [E] cost per request of each expert (the target's unit)
    controller: BudgetController  # its target turns costs into target units
    posterior: ScorePosterior  # what Thompson draws are taken from
    neighbours: NeighbourMemory | None  # feedback residuals on earlier prompts (None: off)
    detector: ChangeDetector | None  # the change detector the probe reads (None: off)
    explore_cap: float  # the exploring share allowed over the last ``window`` requests
    explore_at_zero: bool  # explore, beyond the cap, where the cost weight is 0
    explored: deque[bool]  # per recent decision (the last ``window``), whether it explored
    rng: np.random.Generator  # the seeded source of Thompson draws
    kg: KnowledgeGradient  # explore_policy kg: the value of one more observation of each cell (off: Thompson)
    after_alarm: AlarmExploration  # experts an alarm just moved, explored beyond the cap
    probe: ChangeProbe  # requests routed to a suspect expert
    confirm: ChangeConfirm  # requests routed to an expert whose downward alarm is on trial
    recent: RecentMix  # the recent requests the feed-forward weight reads
    _lock: threading.RLock  # serving threads choose, feed back and re-solve concurrently
    _snapshot: MapSnapshot  # the map in force

    def _scaled_cost(self) -> np.ndarray:
        return self.cost / self.controller.target

    def _spent(self) -> float | None:  # read only where alarm_explore_underspend is set
        """The realised cost over the controller's window as a share of the target (None before any request)."""
        realised = self.controller.realised()
        return None if realised is None else realised / self.controller.target

    def exploring_share(self) -> float:
        """Exploring decisions among the last ``window`` requests, divided by ``window`` (a budget of
        ``explore_cap * window`` explorations per window, however few requests came so far)."""
        return sum(self.explored) / (self.explored.maxlen or 1)

    def _prompt_row(self, category: int, predicted: np.ndarray | None) -> np.ndarray | None:
        """The offline per-prompt prediction ``[E]`` in prompt mode (None in category mode or without one)."""
        if self.granularity != "prompt" or predicted is None:
            return None
        row = np.asarray(predicted, dtype=np.float64)
        if row.shape != self.cost.shape or not np.isfinite(row).all():
            raise ValueError(f"a prompt's predicted scores must be {self.cost.shape[0]} finite numbers")
        return self.offline[category] + self.prompt_weight * (row - self.offline[category])

    def choose(
        self,
        category: int,
        allowed: Sequence[bool] | np.ndarray | None = None,
        predicted: Sequence[float] | np.ndarray | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
    ) -> Decision:
        """The expert for a request of ``category``; ``allowed`` marks the experts its constraints permit;
        ``predicted`` is the offline per-prompt score of every expert (used in prompt mode; without it a
        prompt-mode request is routed by its category); ``vector``, the prompt's vector, finds its
        neighbours' correction where ``neighbours`` is set."""
        row = self._prompt_row(category, None if predicted is None else np.asarray(predicted))
        with self._lock:
            if row is not None and vector is not None and self.neighbours is not None:
                row = row + self.neighbours.correction(np.asarray(vector))
            return self._choose(category, allowed, row)

    def _choose(self, category: int, allowed: Sequence[bool] | np.ndarray | None, row: np.ndarray | None) -> Decision:
        snap = self._snapshot
        mask = None if allowed is None else np.asarray(allowed, dtype=bool)
        if mask is not None and not mask.any():
            raise ValueError("no expert satisfies the request's constraints")
        shift = 0.0 if row is None else row - self.offline[category]  # the prompt's offset from its category
        if row is None and (mask is None or mask[snap.assignment[category]]):
            greedy = snap.assignment[category]
        else:
            scores = (snap.means[category] + shift)[None, :]
            greedy = int(solve_weighted(scores, self._scaled_cost(), snap.weight, mask)[0])
        choice, explored = greedy, False
        capped = self.explore_cap > 0 and self.exploring_share() < self.explore_cap
        unbound = snap.weight <= 0.0  # at weight 0 (or below) the budget is not binding
        alarmed = self.after_alarm.open()
        objective = snap.means[category] + shift - snap.weight * self._scaled_cost()
        if capped and self.kg.on:  # the value of information instead of a draw (online_kg)
            informed = self._informed(category, row, objective, mask, greedy)
            choice, explored = (greedy, False) if informed is None else (informed, True)
        elif capped or (self.explore_at_zero and unbound) or self.after_alarm.acts(unbound, self._spent):
            draw = (self.posterior.sample(category, self.rng) + shift)[None, :]
            sampled = int(solve_weighted(draw, self._scaled_cost(), snap.weight, mask)[0])
            # beyond the cap and explore_at_zero, only an expert an alarm just moved is explored
            if sampled != greedy and (capped or (self.explore_at_zero and unbound) or alarmed[sampled]):
                choice, explored = sampled, True
        probed = self.probe.pick(self.detector, objective, greedy, mask, choice if explored else None)
        choice, explored = (choice, explored) if probed is None else (probed, True)
        pre = self.confirm.pick(snap, category, shift, self.posterior.offset, self._scaled_cost(), mask, choice)
        choice, explored = (choice, explored) if pre is None else (pre, True)  # a downward alarm re-tested
        self.explored.append(explored)
        self._join_mix(category, row)
        return Decision(category, choice, explored, snap.version)

    def _informed(
        self, category: int, row: np.ndarray | None, objective: np.ndarray, mask: np.ndarray | None, greedy: int
    ) -> int | None:
        """The allowed expert maximising ``objective`` (this request's, [E]) plus its knowledge-gradient bonus, where
        its total beats the ``greedy`` choice's (None: the greedy choice stands)."""
        snap = self._snapshot
        spread = observation_spread(self.posterior.mean()[category], self.posterior.count()[category])
        correction = snap.means[category] - self.offline[category]
        own = self.offline[category] if row is None else row
        total = objective + self.kg.bonus(category, own, correction, snap.weight, self._scaled_cost(), spread)
        best = int(np.argmax(total if mask is None else np.where(mask, total, -np.inf)))
        return best if best != greedy and total[best] > total[greedy] + 1e-12 else None

    def _join_mix(self, category: int, row: np.ndarray | None) -> None:
        own = self.offline[category] if row is None else row
        self.recent.join(category, own)
        self.kg.joined(category, own)
        self.after_alarm.routed()

    def remember(self, category: int, predicted: Sequence[float] | np.ndarray | None = None) -> None:
        """A request of ``category`` routed by another process (a cluster's ingress replica) joins the mix
        that the feed-forward weight reads, as ``choose`` would have added it."""
        row = self._prompt_row(category, None if predicted is None else np.asarray(predicted))
        with self._lock:
            self._join_mix(category, row)
