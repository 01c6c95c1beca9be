"""The online router in a serving process: names instead of indices, feedback by request id.

``LiveOnline`` wraps an ``OnlineRouter`` started from a trained router's per-category scores, with the
library's budget (``router.budget``: average params or price) as its target. It chooses among the
experts a request's constraints permit, remembers which (category, expert) each recent request id was
routed to (the last ``REMEMBERED`` ids) so a feedback score can be tied to it once, and turns its state
into JSON values and back under the category and expert names. Knows nothing about HTTP or SQLite.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection
from typing import Any, Literal

import numpy as np

from coserve.config import LibraryConfig
from coserve.errors import ConfigError
from coserve.metrics import Metrics
from coserve.router.online import OnlineRouter, resume
from coserve.router.trained import TrainedRouter

__all__ = ["LiveOnline", "Outcome"]

REMEMBERED = 100_000  # request ids whose routing is kept for feedback
Outcome = Literal["applied", "unknown", "duplicate"]


class LiveOnline:
    """One library's online router: choose by category name, take feedback by request id."""

    def __init__(self, library: LibraryConfig, trained: TrainedRouter, seed: int = 0) -> None:
        settings, budget = library.router.online, library.router.budget
        if settings is None:
            raise ConfigError("router.online is not set")
        if budget.avg_params_b is not None:
            self.axis, target, cost = (
                "params",
                budget.avg_params_b,
                [library.expert(e).params_b for e in trained.experts],
            )
        elif budget.avg_price is not None:
            self.axis, target, cost = "price", budget.avg_price, list(trained.price)
        else:
            raise ConfigError("router.online: needs a router.budget (avg_params_b or avg_price) to hold")
        if not np.isfinite(np.asarray(cost, dtype=np.float64)).all():
            raise ConfigError(f"router.online: the trained router lacks a {self.axis} cost for some experts")
        self.categories, self.experts = list(trained.classes), list(trained.experts)
        self.router = OnlineRouter(
            np.asarray(trained.S, dtype=np.float64),
            cost,
            target,
            prior_strength=settings.prior_strength,
            max_count=max(settings.max_count, settings.prior_strength),
            step=settings.step,
            explore_cap=settings.explore_cap,
            window=settings.window,
            signals=frozenset(settings.signals),
            seed=seed,
        )
        self._routed: OrderedDict[str, tuple[int, int] | None] = OrderedDict()  # None: already scored
        self._lock = threading.Lock()

    def choose(self, request_id: str, category: str, permitted: Collection[str]) -> tuple[str, int]:
        """The expert for a request of ``category`` among ``permitted`` (all, if none is), and the map version."""
        allowed = np.array([e in permitted for e in self.experts])
        decision = self.router.choose(self.categories.index(category), allowed if allowed.any() else None)
        with self._lock:
            self._routed[request_id] = (decision.category, decision.expert)
            while len(self._routed) > REMEMBERED:
                self._routed.popitem(last=False)
        return self.experts[decision.expert], decision.map_version

    @property
    def version(self) -> int:
        """The version of the map in force."""
        return self.router.snapshot.version

    def served(self, expert: str) -> None:
        """The request was answered by ``expert``: its cost moves the weight."""
        if expert in self.experts:
            self.router.served(self.experts.index(expert))

    def failed(self, request_id: str, expert: str, timed_out: bool) -> bool:
        """``expert`` failed (or timed out) on the request and another was tried: one automatic signal,
        the first enabled of ``timeout``/``failure`` then ``fallback``; False where none is enabled."""
        with self._lock:
            cell = self._routed.get(request_id)
        if cell is None or expert not in self.experts:
            return False
        for kind in ("timeout" if timed_out else "failure", "fallback"):
            if kind in self.router.signals:
                return self.router.signal(cell[0], self.experts.index(expert), kind)
        return False

    def check_feedback(self, request_id: str) -> Outcome:
        """Whether a score for ``request_id`` would be applied, is unknown here, or is a second one."""
        with self._lock:
            if request_id not in self._routed:
                return "unknown"
            return "duplicate" if self._routed[request_id] is None else "applied"

    def feedback(self, request_id: str, score: float) -> Outcome:
        """Apply an API score in [-1, 1] (mapped to [0, 1]) to the request's (category, expert), once."""
        with self._lock:
            if request_id not in self._routed:
                return "unknown"
            cell = self._routed[request_id]
            if cell is None:
                return "duplicate"
            self._routed[request_id] = None
        self.router.feedback(cell[0], cell[1], (score + 1.0) / 2.0)
        return "applied"

    def export_state(self) -> dict[str, Any]:
        return self.router.export_state(self.categories, self.experts)

    def resume(self, state: dict[str, Any] | None) -> bool:
        """Restore a saved state (False, with a warning, where it does not fit: the offline map stays)."""
        return resume(self.router, state, self.categories, self.experts)

    def figures(self) -> dict[str, float]:
        """What ``/metrics`` exports: the target, the realised window average, the weight, the map version."""
        controller = self.router.controller
        realised = controller.realised()
        return {
            "target": controller.target,
            "realised": float("nan") if realised is None else realised,  # NaN before the first request
            "weight": controller.weight,
            "version": float(self.router.snapshot.version),
        }

    def publish(self, metrics: Metrics) -> None:
        """Set the ``/metrics`` gauges from ``figures``."""
        figures = self.figures()
        metrics.budget_target.labels(self.axis).set(figures["target"])
        metrics.budget_realised.labels(self.axis).set(figures["realised"])
        metrics.cost_weight.set(figures["weight"])
        metrics.map_version.set(figures["version"])
