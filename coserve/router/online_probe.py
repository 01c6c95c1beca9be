"""Probing a suspect expert, so that the change detector's evidence on it accrues sooner (session 13).

Where an expert degrades while the traffic mix sends it few requests, its down-side CUSUM climbs on few
feedbacks and the true alarm comes late (docs/adapt.md, "Tuning", session 13, branch adapt13b). An expert
is *suspect* while its down side stands above ``share`` times the alarm level (and below the level: at the
level the alarm fires and the statistics restart). ``ChangeProbe`` then lets ``OnlineRouter`` send it a
request whose constraints allow it, whose choice was another expert, and on which it scores within
``margin`` of that choice in the router's own objective (corrected estimate less the cost weight times its
cost in target units), so each probed request costs at most ``margin`` of that objective. A suspicion
episode may probe at most ``requests`` requests; its budget is renewed only once the down side has
returned to 0 (an alarm restarts it at 0, so the next episode starts afresh). The probe has its own cap
(the episode's budget), not ``explore_cap``; a probed decision counts as exploring (it departs from the
map), so it also fills the exploring share that ``explore_cap`` reads.

Pure numbers; knows nothing about posteriors, the controller or the store (``coserve.router.online`` uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coserve.router.drift import ChangeDetector
from coserve.router.online_alarm import saved_counts

__all__ = ["ChangeProbe", "ProbeSettings"]


@dataclass(frozen=True)
class ProbeSettings:
    """``router.online.change_probe`` (share of the alarm level; 0: off), ``change_probe_requests`` and
    ``change_probe_margin``."""

    share: float = 0.0
    requests: int = 100
    margin: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.share < 1.0 or self.requests < 1 or not 0.0 <= self.margin < float("inf"):
            raise ValueError("change_probe must be in [0, 1), change_probe_requests >= 1, change_probe_margin >= 0")


class ChangeProbe:
    """Per expert, the requests its current suspicion episode may still probe."""

    def __init__(self, experts: int, settings: ProbeSettings | None = None) -> None:
        if experts <= 0:
            raise ValueError("experts must be positive")
        self.settings = settings or ProbeSettings()
        self.left = np.full(experts, self.settings.requests, dtype=np.int64)
        self.probed = 0  # requests probed so far (not saved: a count for reports)

    @property
    def active(self) -> bool:
        """Whether probing is on (``share`` > 0)."""
        return self.settings.share > 0.0

    def pick(
        self, detector: ChangeDetector | None, objective: np.ndarray, greedy: int, mask: np.ndarray | None
    ) -> int | None:
        """The suspect expert to probe for this request, or None (off, or no detector). ``objective`` [E]: the
        request's score of each expert in the router's objective; ``greedy``: the router's choice; ``mask``
        [E]: the experts the request allows (None: all). Where several suspects qualify, the one whose down
        side stands highest is probed."""
        if not self.active or detector is None:
            return None
        down, level = detector.stat["down"], detector.threshold
        self.left[down <= 0.0] = self.settings.requests  # back at 0: the next episode has a whole budget
        suspect = (down > self.settings.share * level) & (down < level) & (self.left > 0)
        suspect &= objective >= objective[greedy] - self.settings.margin
        suspect[greedy] = False
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
