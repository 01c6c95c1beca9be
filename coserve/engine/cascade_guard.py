"""The cascade's live guard (``routing.cascade.guard_window``): per category, the share of the last
N cascaded requests that escalated. A cascade from a small expert costs less than asking the big one
only while that share f stays below break-even, cost(small) + f cost(big) < cost(big), i.e.
f < 1 - params(small)/params(big) (or the library's ``guard_max_escalation``). Above it the category
answers by single choice; every ``guard_probe``-th request still cascades, so the share is measured
again and the cascade comes back when the traffic gets easier. Thread-safe. This module knows
nothing about experts, checks or HTTP: the cascade tells it what happened.
"""

from __future__ import annotations

import threading
from collections import deque


def break_even(start_params_b: float, next_params_b: float) -> float:
    """The escalation share above which cascading from ``start`` costs more than asking ``next``."""
    return 1.0 - start_params_b / next_params_b


class EscalationGuard:
    """Per category: the last ``window`` cascaded requests (escalated or not) and a probe counter."""

    def __init__(self, window: int, probe: int, max_escalation: float | None = None):
        self.window, self.probe, self.max_escalation = window, probe, max_escalation
        self._lock = threading.Lock()
        self._outcomes: dict[str, deque[bool]] = {}
        self._held: dict[str, int] = {}  # requests answered by single choice since the last probe

    def limit(self, start_params_b: float, next_params_b: float) -> float:
        """The largest escalation share the category may show and keep cascading."""
        if self.max_escalation is not None:
            return self.max_escalation
        return break_even(start_params_b, next_params_b)

    def share(self, category: str) -> float | None:
        """The escalation share of the category's last ``window`` cascades (None: window not full)."""
        with self._lock:
            outcomes = self._outcomes.get(category)
            if outcomes is None or len(outcomes) < self.window:
                return None
            return sum(outcomes) / len(outcomes)

    def allows(self, category: str, limit: float) -> bool:
        """Whether this request of ``category`` cascades (False: single choice, the guard holds it)."""
        if self.window == 0:
            return True
        with self._lock:
            outcomes = self._outcomes.get(category)
            if outcomes is None or len(outcomes) < self.window or sum(outcomes) / len(outcomes) <= limit:
                self._held[category] = 0
                return True
            held = self._held.get(category, 0) + 1
            if held >= self.probe:  # a probe: cascade this one, so the share is measured again
                self._held[category] = 0
                return True
            self._held[category] = held
            return False

    def record(self, category: str, escalated: bool) -> None:
        """One cascaded request of ``category`` ended; whether the check escalated it."""
        if self.window == 0:
            return
        with self._lock:
            self._outcomes.setdefault(category, deque(maxlen=self.window)).append(escalated)
