"""Probing a suspect expert, so that the change detector's evidence on it accrues sooner (session 13).

Where an expert degrades while the traffic mix sends it few requests, its down-side CUSUM climbs on few
feedbacks and the true alarm comes late (docs/adapt-tuning.md, session 13, branch adapt13b). An expert
is *suspect* while its down side stands above ``share`` times the alarm level (and below the level: at the
level the alarm fires and the statistics restart). ``ChangeProbe`` then lets ``OnlineRouter`` send it a
request whose constraints allow it, whose choice was another expert, and on which it scores within
``margin`` of that choice in the router's own objective (corrected estimate less the cost weight times its
cost in target units), so each probed request costs at most ``margin`` of that objective. A suspicion
episode may probe at most ``requests`` requests; its budget is renewed only once the down side has
returned to 0 (an alarm restarts it at 0, so the next episode starts afresh). The probe has its own cap
(the episode's budget), not ``explore_cap``; a probed decision counts as exploring (it departs from the
map), so it also fills the exploring share that ``explore_cap`` reads.

``starved`` > 0 (session 13, branch probe13b) probes a suspect only while its traffic has fallen: while its share
of the recent routed requests (a running mean over the last ``short`` requests, exponentially weighted once more
have come) stands below ``starved`` times its longer-run share (the same over ``long`` requests). A busy expert
that is suspect by noise keeps its share, and its own traffic brings the detector evidence without probes. Every
routed request counts (the map's choice, an exploration or a probe). The shares are not saved: after a restart
both start afresh and stay equal until ``short`` requests have come, so no expert counts as starved until then.

Pure numbers; knows nothing about posteriors, the controller or the store (``coserve.router.online`` uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coserve.router.drift import ChangeDetector
from coserve.router.online_alarm import saved_counts

__all__ = ["ChangeProbe", "ProbeSettings", "TrafficShares"]


@dataclass(frozen=True)
class ProbeSettings:
    """``router.online.change_probe`` (share of the alarm level; 0: off), ``change_probe_requests`` and
    ``change_probe_margin``."""

    share: float = 0.0
    requests: int = 100
    margin: float = 0.05
    starved: float = 0.0  # change_probe_starved: probe only below this ratio of short- to long-run share (0: always)
    short: int = 500  # requests the short-run share is a mean over
    long: int = 5000  # requests the long-run share is a mean over

    def __post_init__(self) -> None:
        if not 0.0 <= self.share < 1.0 or self.requests < 1 or not 0.0 <= self.margin < float("inf"):
            raise ValueError("change_probe must be in [0, 1), change_probe_requests >= 1, change_probe_margin >= 0")
        if not 0.0 <= self.starved <= 1.0 or not 1 <= self.short < self.long:
            raise ValueError("change_probe_starved must be in [0, 1], and 1 <= short < long requests")


class TrafficShares:
    """Per expert, its share of the routed requests over a short and a long run: each a running mean of the
    indicator "routed to this expert", weighing the n-th request 1 / n until it reaches the run's length, then
    1 / length (an exponentially weighted mean with that memory)."""

    def __init__(self, experts: int, short: int, long: int) -> None:
        self.short, self.long = np.zeros(experts), np.zeros(experts)
        self.lengths = (short, long)
        self.seen = 0

    def routed(self, expert: int) -> None:
        """A request was routed to ``expert``."""
        self.seen += 1
        hit = np.zeros_like(self.short)
        hit[expert] = 1.0
        for share, length in zip((self.short, self.long), self.lengths, strict=True):
            share += (hit - share) / min(self.seen, length)

    def starved(self, ratio: float) -> np.ndarray:
        """[E] whether each expert's short-run share stands below ``ratio`` times its long-run share."""
        return self.short < ratio * self.long


class ChangeProbe:
    """Per expert, the requests its current suspicion episode may still probe."""

    def __init__(self, experts: int, settings: ProbeSettings | None = None) -> None:
        if experts <= 0:
            raise ValueError("experts must be positive")
        self.settings = settings or ProbeSettings()
        self.left = np.full(experts, self.settings.requests, dtype=np.int64)
        self.probed = 0  # requests probed so far (not saved: a count for reports)
        self.shares = TrafficShares(experts, self.settings.short, self.settings.long)  # read where starved > 0

    @property
    def active(self) -> bool:
        """Whether probing is on (``share`` > 0)."""
        return self.settings.share > 0.0

    def pick(
        self,
        detector: ChangeDetector | None,
        objective: np.ndarray,
        greedy: int,
        mask: np.ndarray | None,
        explored: int | None = None,
    ) -> int | None:
        """The suspect expert to probe for this request, or None (off, no detector, or ``explored`` is the expert
        an exploration already routed it to). ``objective`` [E]: the request's score of each expert in the
        router's objective; ``greedy``: the router's choice; ``mask`` [E]: the experts the request allows (None:
        all). Where several suspects qualify, the one whose down side stands highest is probed. With
        ``starved`` > 0 the request's expert (the probed one, ``explored`` or ``greedy``) joins the shares."""
        if not self.active or detector is None:
            return None
        chosen = self._suspect(detector, objective, greedy, mask) if explored is None else None
        if self.settings.starved > 0.0:
            self.shares.routed(next(e for e in (chosen, explored, greedy) if e is not None))
        return chosen

    def _suspect(
        self, detector: ChangeDetector, objective: np.ndarray, greedy: int, mask: np.ndarray | None
    ) -> int | None:
        down, level = detector.stat["down"], detector.threshold
        self.left[down <= 0.0] = self.settings.requests  # back at 0: the next episode has a whole budget
        suspect = (down > self.settings.share * level) & (down < level) & (self.left > 0)
        suspect &= objective >= objective[greedy] - self.settings.margin
        suspect[greedy] = False
        if self.settings.starved > 0.0:
            suspect &= self.shares.starved(self.settings.starved)
        if mask is not None:
            suspect &= mask
        if not suspect.any():
            return None
        chosen = int(np.argmax(np.where(suspect, down, -np.inf)))
        self.left[chosen] -= 1
        self.probed += 1
        return chosen

    def export_state(self) -> list[int]:
        """The requests left to each expert's episode, as JSON values."""
        return [int(n) for n in self.left]

    def restored(self, saved: Any) -> ChangeProbe:
        """A probe with these settings and ``export_state``'s output loaded (None, a state saved before it
        existed: every budget whole), each count at most this probe's ``requests``; ValueError where it does
        not fit."""
        fresh = ChangeProbe(len(self.left), self.settings)
        if saved is None:
            return fresh
        fresh.left = np.minimum(saved_counts(saved, len(self.left), "change probe"), self.settings.requests)
        return fresh
