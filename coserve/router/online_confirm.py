"""A downward alarm confirmed before it sticks (``change_confirm``, session 15).

A downward alarm moves an expert's means by the estimated shift and cuts its cells to ``reset_count``
pseudo-counts. Where the alarm was false (noise, the offline table's own error), the moved expert looks worse
than it is and, with no exploration, never gets the traffic whose feedback would correct it. ``ChangeConfirm``
makes such a move provisional: the alarm opens an *episode* that keeps the expert's pre-alarm Beta column and the
alarm's shift.

* Routing: while the episode is open, a request for which the expert would be the router's greedy choice under
  its pre-alarm means (the same objective, weight and constraints; only that expert's estimates restored) is
  routed to it, and counts as exploring; at most ``requests`` routed requests per episode.
* Test: every feedback of the expert while the episode is open adds to a sequential probability ratio test
  (Gaussian, sd ``sd``): its residual ``r``, the score less the pre-alarm estimate of its cell less the same
  calibration offset the change detector reads, tests mean 0 (H0, no change) against mean ``shift`` (H1):
  ``llr += shift / sd**2 * (r - shift / 2)``, with error rates ``error`` both ways (Wald's bounds
  ``log((1 - error) / error)`` and its negative). Above the upper bound the drop is confirmed: the move stays.
  Below the lower bound the alarm was false: the expert's pre-alarm column comes back with the episode's own
  feedbacks added on top (capped at the posterior's ``max_count``), the detector's statistics for it restart at
  0, and the alarm's log entry is marked ``reverted``.
* End: the routed budget used up, or ``SPAN`` times that many requests routed in all, without a decision: the
  move stays (``expired``). A second downward alarm of the same expert while its episode is open confirms it.

``sd`` 0.45 is fixed, not estimated: most scores are 0 or 1, whose spread about a mean near 0.7 is 0.46 (0.5 at
0.5; a graded score's is smaller); an estimate from the handful of feedbacks a test reads would be noisier than the
test it feeds, and one from before the alarm would be measured on another expert's traffic share.

Episodes are not saved: a restart drops them, with a log line, and keeps the moves (``restored``).

Pure numbers; acts on the posterior and the detector it is given, knows nothing about HTTP or the store.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coserve.router.drift import ChangeDetector
from coserve.router.online_map import MapSnapshot, solve_weighted
from coserve.router.online_model import ScorePosterior

__all__ = ["SPAN", "ChangeConfirm", "ConfirmSettings"]

log = logging.getLogger("coserve.router")

SPAN = 10  # an episode also ends after this many times its routed budget of requests routed in all


@dataclass(frozen=True)
class ConfirmSettings:
    """``router.online.change_confirm`` (off: False), ``change_confirm_requests``, ``_sd`` and ``_error``."""

    on: bool = False
    requests: int = 200
    sd: float = 0.45
    error: float = 0.05

    def __post_init__(self) -> None:
        if self.requests < 1 or not 0.0 < self.sd < math.inf or not 0.0 < self.error < 0.5:
            raise ValueError(
                "change_confirm_requests must be >= 1, change_confirm_sd > 0 and change_confirm_error in (0, 0.5)"
            )

    @property
    def bound(self) -> float:
        """Wald's bound on the log-likelihood ratio (equal error rates: the lower bound is its negative)."""
        return math.log((1.0 - self.error) / self.error)


@dataclass
class Episode:
    """One open confirmation: the pre-alarm column, the alarm's shift, and the test so far."""

    alpha: np.ndarray  # [K] the expert's Beta parameters before the alarm
    beta: np.ndarray
    shift: float  # the alarm's estimated shift (< 0)
    entry: dict[str, Any]  # the alarm's log entry (marked with the outcome)
    llr: float = 0.0
    routed: int = 0  # requests the episode routed to the expert
    seen: int = 0  # requests routed in all since it opened
    gained: list[tuple[int, float]] = field(default_factory=list)  # (category, cell score) of its feedbacks


class ChangeConfirm:
    """Per expert, the open confirmation episode of its last downward alarm (off: never opens one)."""

    def __init__(self, experts: int, settings: ConfirmSettings | None = None) -> None:
        if experts <= 0:
            raise ValueError("experts must be positive")
        self.settings = settings or ConfirmSettings()
        self.experts = experts
        self.episodes: dict[int, Episode] = {}
        self.routed = 0  # requests routed by episodes (a count for reports)
        self.outcomes = {"confirmed": 0, "reverted": 0, "expired": 0}

    def opened(self, expert: int, posterior: ScorePosterior, shift: float, entry: dict[str, Any]) -> None:
        """A downward alarm is about to move ``expert`` (``posterior`` not yet rebased): an episode opens, or,
        where one is open, the second alarm confirms it."""
        if not self.settings.on:
            return
        if expert in self.episodes:
            self._close(expert, "confirmed")
            return
        column = (posterior.alpha[:, expert].copy(), posterior.beta[:, expert].copy())
        self.episodes[expert] = Episode(*column, float(shift), entry)
        entry["confirm"] = "open"

    def pick(
        self,
        snap: MapSnapshot,
        category: int,
        shift: float | np.ndarray,
        offset: np.ndarray,
        cost: np.ndarray,
        mask: np.ndarray | None,
        choice: int,
    ) -> int | None:
        """The expert an episode routes this request to, or None. ``snap``: the map in force; ``shift`` [E] (or 0):
        the prompt's offset from its category; ``offset`` [E]: the posterior's per-expert offsets; ``cost``: the
        costs in target units; ``mask``: the experts the request allows (None: all); ``choice``: the router's
        choice so far. Ends the episodes whose routed budget or span is spent."""
        if not self.episodes:
            return None
        offsets = np.broadcast_to(np.asarray(shift, dtype=np.float64), offset.shape)  # the prompt's, per expert
        row = snap.means[category] + offsets
        for expert in list(self.episodes):
            episode = self.episodes[expert]
            episode.seen += 1
            if episode.routed >= self.settings.requests or episode.seen > SPAN * self.settings.requests:
                self._close(expert, "expired")
        for expert, episode in self.episodes.items():
            if expert == choice:
                continue
            scores = np.array(row, dtype=np.float64)
            pre = min(1.0, max(0.0, _pre_estimate(episode, category) + float(offset[expert])))
            scores[expert] = pre + float(offsets[expert])
            if int(solve_weighted(scores[None, :], cost, snap.weight, mask)[0]) == expert:
                episode.routed += 1
                self.routed += 1
                return expert
        return None

    def feedback(
        self,
        category: int,
        expert: int,
        score: float,
        calibrated: float,
        posterior: ScorePosterior,
        detector: ChangeDetector | None,
    ) -> bool:
        """A feedback ``score`` (as the cell learns it) of ``expert`` on ``category``, after the posterior learnt it;
        ``calibrated``: the offset the detector read its residual less. True where it reverted the alarm."""
        episode = self.episodes.get(expert)
        if episode is None:
            return False
        estimate = min(1.0, max(0.0, _pre_estimate(episode, category) + float(posterior.offset[expert])))
        residual = score - estimate - calibrated
        sd2 = self.settings.sd**2
        episode.llr += episode.shift / sd2 * (residual - episode.shift / 2.0)
        episode.gained.append((category, score))
        if episode.llr >= self.settings.bound:
            self._close(expert, "confirmed")
        elif episode.llr <= -self.settings.bound:
            self._revert(expert, episode, posterior, detector)
            return True
        return False

    def _revert(
        self, expert: int, episode: Episode, posterior: ScorePosterior, detector: ChangeDetector | None
    ) -> None:
        alpha, beta = episode.alpha.copy(), episode.beta.copy()
        for category, score in episode.gained:  # the episode's own feedbacks, on top of the pre-alarm column
            alpha[category] += score
            beta[category] += 1.0 - score
        total = alpha + beta
        shrink = np.minimum(1.0, posterior.max_count / total)  # the cap the posterior keeps
        posterior.alpha[:, expert], posterior.beta[:, expert] = alpha * shrink, beta * shrink
        if detector is not None:
            detector.reset(expert)
            detector.rebased(expert)
        self._close(expert, "reverted")

    def _close(self, expert: int, outcome: str) -> None:
        episode = self.episodes.pop(expert)
        episode.entry["confirm"] = outcome
        self.outcomes[outcome] += 1

    def export_state(self) -> list[int]:
        """The experts whose episode is open (a restart drops them: ``restored``)."""
        return sorted(self.episodes)

    def restored(self, state: dict[str, Any]) -> ChangeConfirm:
        """A fresh ``ChangeConfirm`` with these settings; episodes open at the save (``state["change_confirm"]``, a
        list of expert indices; anything else is ignored) are dropped with a log line, their moves kept."""
        fresh = ChangeConfirm(self.experts, self.settings)
        saved = state.get("change_confirm")
        if isinstance(saved, list) and saved:
            log.info("%d alarm confirmation episode(s) open at the save dropped on restart; moves kept", len(saved))
        return fresh


def _pre_estimate(episode: Episode, category: int) -> float:
    """The expert's pre-alarm mean on ``category`` (its cell, without the expert's offset)."""
    return float(episode.alpha[category] / (episode.alpha[category] + episode.beta[category]))
