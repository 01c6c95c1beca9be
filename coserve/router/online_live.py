"""The online router in a serving process: names instead of indices, feedback by request id.

``LiveOnline`` wraps an ``OnlineRouter`` started from a trained router's per-category scores, with the
library's budget (``router.budget``: average params or price) as its target. It chooses among the
experts a request's constraints permit, remembers the category of each recent request id (the last
``REMEMBERED``) for the automatic signals of an expert failing on it, applies feedback scores by
category and expert name (the caller ties a score to its request once, through the decision log), and
turns its state into JSON values and back under those names. With ``router.online.granularity: prompt``
it routes each request by the trained router's per-prompt scores (``TrainedRouter.scores``) corrected by
the category's feedback, and remembers those scores per request id so that a later feedback score is
learnt as the residual against them; the server also logs them with the decision, and a score for a
request no longer remembered (routed before a restart, or forgotten) is learnt against the logged
prediction its caller passes (none logged: as for a prompt predicted at its category's mean). With
``change_calibration`` its change detector reads residuals less offsets made at start from the prior's
out-of-fold predictions that ``coserve train`` stores beside the router (``directory``;
``online_calibration``). Knows nothing about HTTP or SQLite.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coserve.config import LibraryConfig
from coserve.errors import ConfigError
from coserve.metrics import Metrics
from coserve.router.online import OnlineRouter, resume
from coserve.router.online_calibration import fading_state, restore_fading, served_calibration
from coserve.router.trained import TrainedRouter

__all__ = ["LiveOnline", "online_for"]

log = logging.getLogger("coserve.router")

REMEMBERED = 100_000  # request ids whose category is kept for automatic signals


def _check_target(library: LibraryConfig, axis: str, target: float, cost: Mapping[str, float]) -> None:
    """ConfigError where no map can hold ``target``: the controller divides by it, and below the cheapest
    expert's cost every request overspends, so the cost weight would only grow (and be saved so). A warning
    where it never binds: at or above the dearest expert's cost no request overspends, the weight stays at
    its floor, and every request goes to its best expert whatever it costs (a start the operator may mean)."""
    key = "avg_params_b" if axis == "params" else "avg_price"
    if not target > 0:
        raise ConfigError(f"{library.path}: router.budget.{key} must be above 0 for router.online to hold it")
    cheapest = min(cost, key=lambda name: cost[name])
    if target < cost[cheapest]:
        raise ConfigError(
            f"{library.path}: router.budget.{key} {target:g} is below the cheapest expert's ({cheapest}: "
            f"{cost[cheapest]:g}): no map can hold it; raise the budget or add a cheaper expert"
        )
    dearest = max(cost, key=lambda name: cost[name])
    if target >= cost[dearest]:
        log.warning(
            "%s: router.budget.%s %g is at or above the dearest expert's (%s: %g): the budget does not bind; "
            "router.online's cost weight stays at its floor and each request goes to its best expert",
            library.path, key, target, dearest, cost[dearest],
        )  # fmt: skip


def online_for(library: LibraryConfig, trained: TrainedRouter, directory: Path) -> LiveOnline:
    """The ``router.online`` of ``library`` over ``trained`` (from ``directory``); ConfigError where it cannot
    serve (no category classifier, neighbours, or a budget ``LiveOnline`` refuses)."""
    assert library.router.online is not None
    if trained.classifier is None:
        raise ConfigError(f"{library.path}: router.online: needs a trained router with a category classifier")
    if library.router.online.neighbours is not None:  # the server passes no prompt vector yet
        raise ConfigError(f"{library.path}: router.online.neighbours: replay only, not served yet")
    return LiveOnline(library, trained, directory=directory)


class LiveOnline:
    """One library's online router: choose by category name, take feedback by request id."""

    def __init__(
        self, library: LibraryConfig, trained: TrainedRouter, seed: int = 0, directory: Path | None = None
    ) -> None:
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
            raise ConfigError(f"{library.path}: router.online: needs a router.budget (avg_params_b or avg_price)")
        if not np.isfinite(np.asarray(cost, dtype=np.float64)).all():
            raise ConfigError(f"{library.path}: router.online: the trained router lacks an expert's {self.axis} cost")
        _check_target(library, self.axis, target, dict(zip(trained.experts, cost, strict=True)))
        self.categories, self.experts = list(trained.classes), list(trained.experts)
        self.router = OnlineRouter.from_settings(np.asarray(trained.S, dtype=np.float64), cost, target, settings, seed)
        # the change detector's offsets, from the prior's out-of-fold predictions beside the trained router
        self.router.calibration = served_calibration(
            directory, settings, self.router.offline, np.asarray(cost, dtype=np.float64), target, self.categories,
            self.experts,
        )  # fmt: skip
        self._routed: OrderedDict[str, int] = OrderedDict()  # request id -> category, for automatic signals
        self._predicted: OrderedDict[str, np.ndarray] = OrderedDict()  # request id -> per-prompt scores (prompt)
        self._lock = threading.Lock()

    def choose(
        self, request_id: str, category: str, permitted: Collection[str], scores: np.ndarray | None = None
    ) -> tuple[str, int]:
        """The expert for a request of ``category`` among ``permitted`` (all, if none is), and the map version;
        ``scores`` are the trained router's per-prompt scores of its experts (used in prompt mode)."""
        allowed = np.array([e in permitted for e in self.experts])
        prompt = self.router.granularity == "prompt" and scores is not None
        row = np.asarray(scores, dtype=np.float64) if prompt else None
        decision = self.router.choose(self.categories.index(category), allowed if allowed.any() else None, row)
        with self._lock:
            self._routed[request_id] = decision.category
            while len(self._routed) > REMEMBERED:
                self._routed.popitem(last=False)
        if row is not None:
            self.remember_prediction(request_id, row)
        return self.experts[decision.expert], decision.map_version

    def remember_prediction(self, request_id: str, scores: np.ndarray) -> None:
        """Keep a request's per-prompt scores (the last ``REMEMBERED``) for the feedback that may follow."""
        with self._lock:
            self._predicted[request_id] = np.asarray(scores, dtype=np.float64)
            while len(self._predicted) > REMEMBERED:
                self._predicted.popitem(last=False)

    @property
    def per_prompt(self) -> bool:
        """Whether requests are routed (and feedback learnt) against their per-prompt scores."""
        return self.router.granularity == "prompt"

    def prediction(self, request_id: str) -> np.ndarray | None:
        """The per-prompt scores remembered for a request (None: not routed here per prompt, or forgotten)."""
        with self._lock:
            return self._predicted.get(request_id)

    def observe(self, request_id: str, category: str, expert: str, logged: Mapping[str, float] | None = None) -> bool:
        """A request routed by another process (a cluster's ingress replica) was answered by ``expert``:
        its category (and remembered scores, else the ``logged`` expert -> score map) join the feed-forward
        mix, its cost moves the weight; False (nothing changes) for a category or expert this router does not know."""
        if category not in self.categories or expert not in self.experts:
            return False
        row = self.prediction(request_id)
        if row is None and logged is not None and all(e in logged for e in self.experts):
            row = np.array([logged[e] for e in self.experts], dtype=np.float64)
        self.router.remember(self.categories.index(category), row)
        self.router.served(self.experts.index(expert))
        return True

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
            category = self._routed.get(request_id)
        if category is None:
            return False
        return self.failed_on(self.categories[category], expert, timed_out)

    def failed_on(self, category: str, expert: str, timed_out: bool) -> bool:
        """``failed`` for a request of ``category`` (a cluster's owner gets the category from the replica)."""
        if category not in self.categories or expert not in self.experts:
            return False
        for kind in ("timeout" if timed_out else "failure", "fallback"):
            if kind in self.router.signals:
                return self.router.signal(self.categories.index(category), self.experts.index(expert), kind)
        return False

    def apply(
        self, category: str, expert: str, score: float, request_id: str | None = None, logged: float | None = None
    ) -> bool:
        """Apply an API score in [-1, 1] (mapped to [0, 1]) to (category, expert), the answer it scores to
        request ``request_id``, learnt against the prediction remembered for it, else against ``logged``
        (the expert's prediction the decision log kept); False (nothing changes) for a category or expert
        this router does not know."""
        if category not in self.categories or expert not in self.experts:
            return False
        row = None if request_id is None else self.prediction(request_id)
        column = self.experts.index(expert)
        guess = logged if row is None else float(row[column])
        self.router.feedback(self.categories.index(category), column, (score + 1.0) / 2.0, predicted=guess)
        return True

    def export_state(self) -> dict[str, Any]:
        return {**self.router.export_state(self.categories, self.experts), **fading_state(self.router.calibration)}

    def resume(self, state: dict[str, Any] | None) -> bool:
        """Restore a saved state (False, with a warning, where it does not fit: the offline map stays)."""
        resumed = resume(self.router, state, self.categories, self.experts)
        if resumed and state is not None:
            restore_fading(self.router.calibration, state)  # how much of each cell's offset is left
        return resumed

    def figures(self) -> dict[str, float]:
        """What ``/metrics`` exports: the target, the realised window average, the weight, the map version."""
        controller = self.router.controller
        realised = controller.realised()
        return {
            "target": controller.target,
            "realised": float("nan") if realised is None else realised,  # NaN before the first request
            "weight": controller.effective,  # the weight the map in force was solved with
            "version": float(self.router.snapshot.version),
        }

    def current_map(self) -> dict[str, str]:
        """The category -> expert map in force (every expert allowed)."""
        return dict(zip(self.categories, (self.experts[e] for e in self.router.snapshot.assignment), strict=True))

    def publish(self, metrics: Metrics) -> None:
        """Set the ``/metrics`` gauges from ``figures``."""
        figures = self.figures()
        metrics.budget_target.labels(self.axis).set(figures["target"])
        metrics.budget_realised.labels(self.axis).set(figures["realised"])
        metrics.cost_weight.set(figures["weight"])
        metrics.map_version.set(figures["version"])
