"""One online router (``router.online``) for a whole Ray cluster: one learner, snapshots on the ingress replicas.

``OnlineOwner`` lives in the ``decision-log`` deployment (coserve.distributed.shared_log), which
already receives every decision row and every feedback score of the cluster. It holds the cluster's
one ``LiveOnline``: one posterior table, one budget controller, one map version sequence. It learns from

* the rows written (``rows``): each row that the online map routed (``map_version`` set) and that was
  answered (status 200) is one served request: its category (and its logged prediction) joins the
  feed-forward mix and its expert's cost moves the weight, so the controller sees the cluster's
  traffic, not one replica's;
* feedback (``feedback``): the decision's category and expert come from the one file, the score is
  learnt against the prompt's per-prompt scores that the replica which routed it sent (``exchange``),
  else (a score that arrives before them, or after the owner restarted) against the prediction the
  row logged (``predicted``; none logged: as for a prompt predicted at its category's mean);
* the automatic signals (failure, time-out, fallback) the replicas send (``exchange``);

and it alone saves the state into the log's one slot (after each applied score, and at most every
``SAVE_EVERY_S`` while served requests move the weight), resuming it when the deployment restarts.

``ClusterOnline`` is an ingress replica's ``router.online``: a ``LiveOnline`` whose posteriors, weight
and map version are the owner's last published ones (``adopt``). Thompson draws and the exploration
cap stay per replica, over the shared posterior (each replica keeps its own share of exploring
decisions under the cap, so the cluster's share is under it too, with no call per request). It never
learns or saves by itself, so its map version is always one the owner published. Every ``EXCHANGE_S``
one call (``online_exchange``) sends its remembered scores and signals and brings back the owner's
state when it differs from the one in force. When the owner does not answer, the replica keeps
routing with its last snapshot (no request fails for it) and ``health`` says since when.

Imports Ray only through the handle it is given; knows nothing about HTTP or SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from coserve.config import LibraryConfig
from coserve.distributed.exchange_loop import ExchangeLoop
from coserve.router.online_live import LiveOnline
from coserve.router.trained import TrainedRouter, load_trained
from coserve.store.log import DecisionRow
from coserve.store.predicted import read_prediction

__all__ = ["EXCHANGE_S", "ClusterOnline", "OnlineOwner", "owner_for"]

log = logging.getLogger("coserve.distributed")

EXCHANGE_S = 0.5  # how often an ingress replica sends its scores and signals and takes the owner's map
SAVE_EVERY_S = 5.0  # the owner saves a state moved by served requests at most this often
CALL_TIMEOUT_S = 5.0
OUTBOX = 10_000  # predictions or signals a replica keeps while the owner does not answer

Signal = tuple[str, str, bool]  # (category, expert, timed out)


def owner_for(library: LibraryConfig, saved: dict[str, Any] | None) -> OnlineOwner | None:
    """The cluster's learner for a library with ``router.online`` (None without), resumed from ``saved``."""
    if library.router.online is None or library.router.trained is None:
        return None
    base = library.path.parent if library.path else Path.cwd()
    trained = load_trained(base / library.router.trained)
    if trained.classifier is None:
        return None  # the ingress refuses such a library at start (CoERouter.from_trained)
    live = LiveOnline(library, trained, directory=base / library.router.trained)
    live.resume(saved)
    return OnlineOwner(live)


class OnlineOwner:
    """The cluster's one learner (held by the ``decision-log`` deployment; see the module doc)."""

    def __init__(self, live: LiveOnline, save_every_s: float = SAVE_EVERY_S) -> None:
        self.live = live
        self.epoch = uuid.uuid4().hex  # changes when the owner restarts: replicas then take its state
        self.save_every_s = save_every_s
        self._saved_version = live.version
        self._saved_at = time.monotonic()

    def rows(self, rows: list[DecisionRow]) -> int:
        """Learn the served cost of the rows the online map routed and answered; how many counted."""
        counted = 0
        for row in rows:
            if row.map_version is not None and row.status == "200" and row.category is not None:
                counted += self.live.observe(row.id, row.category, row.expert, read_prediction(row.predicted))
        return counted

    def feedback(self, category: str, expert: str, score: float, request_id: str, logged: float | None = None) -> bool:
        """An API score in [-1, 1] on a logged decision (``logged``: the expert's prediction its row kept);
        False where the router does not know it."""
        return self.live.apply(category, expert, score, request_id, logged)

    def exchange(
        self, seen: tuple[str, int] | None, predictions: dict[str, list[float]], signals: list[Signal]
    ) -> dict[str, Any] | None:
        """A replica's remembered scores and signals in; the published state out unless ``seen`` (the
        replica's (epoch, version)) is the one in force."""
        for request_id, scores in predictions.items():
            self.live.remember_prediction(request_id, np.asarray(scores, dtype=np.float64))
        for category, expert, timed_out in signals:
            self.live.failed_on(category, expert, timed_out)
        if seen == (self.epoch, self.live.version):
            return None
        return self.published()

    def published(self) -> dict[str, Any]:
        """What the replicas route with: the state (posteriors, weight, version), the feed-forward part
        of the weight, and the cluster's realised window average."""
        figures = self.live.figures()
        realised = None if np.isnan(figures["realised"]) else figures["realised"]
        return {
            "epoch": self.epoch,
            "state": self.live.export_state(),
            "base": self.live.router.controller.base,
            "realised": realised,
        }

    def save_due(self, changed_by_score: bool) -> bool:
        """Whether to save now: after an applied score, or ``save_every_s`` after the last save while
        the version moved."""
        now = time.monotonic()
        moved = self.live.version != self._saved_version
        if changed_by_score or (moved and now - self._saved_at >= self.save_every_s):
            self._saved_version, self._saved_at = self.live.version, now
            return True
        return False


class ClusterOnline(LiveOnline):
    """An ingress replica's online router: the owner's snapshot, routed from here (see the module doc)."""

    def __init__(
        self, library: LibraryConfig, trained: TrainedRouter, handle: Any, replica: str, exchange_s: float = EXCHANGE_S
    ) -> None:
        """Follow the owner behind ``handle`` (the decision-log deployment's) as replica ``replica``,
        whose name seeds its Thompson draws (replicas draw independently)."""
        super().__init__(library, trained, seed=zlib.crc32(replica.encode()))
        self.handle, self.replica = handle, replica
        self.seen: tuple[str, int] | None = None  # (owner epoch, version) of the snapshot in force
        self.realised: float | None = None  # the cluster's realised window average, as published
        self.outbox: dict[str, list[float]] = {}  # request id -> per-prompt scores, for the owner
        self.signals_out: list[Signal] = []
        self.failures = 0  # exchanges in a row the owner did not answer
        self.updated_at: float | None = None  # time.time() the owner last answered
        self.loop = ExchangeLoop(self.exchange, exchange_s)  # started from the serving event loop

    def adopt(self, published: dict[str, Any]) -> bool:
        """Route with the owner's published state from now on; False (snapshot kept) where it does not fit."""
        controller = self.router.controller
        base = controller.base
        controller.base = float(published.get("base", 0.0))
        if not self.resume(published.get("state")):
            controller.base = base
            return False
        self.seen = (str(published["epoch"]), self.version)
        realised = published.get("realised")
        self.realised = None if realised is None else float(realised)
        return True

    def choose(
        self, request_id: str, category: str, permitted: Collection[str], scores: np.ndarray | None = None
    ) -> tuple[str, int]:
        chosen = super().choose(request_id, category, permitted, scores)
        if self.router.granularity == "prompt" and scores is not None and len(self.outbox) < OUTBOX:
            self.outbox[request_id] = [float(s) for s in scores]  # for the owner, should a score follow
        return chosen

    def served(self, expert: str) -> None:
        """Nothing here: the owner counts the cost from the decision's row."""

    def failed(self, request_id: str, expert: str, timed_out: bool) -> bool:
        """Send the signal to the owner (True where an enabled kind will count it)."""
        with self._lock:
            category = self._routed.get(request_id)
        if category is None or expert not in self.experts or len(self.signals_out) >= OUTBOX:
            return False
        self.signals_out.append((self.categories[category], expert, timed_out))
        return bool(self.router.signals)

    def apply(
        self, category: str, expert: str, score: float, request_id: str | None = None, logged: float | None = None
    ) -> bool:
        """Nothing here (False: nothing to save): the owner applied the score when the log stored it."""
        return False

    def figures(self) -> dict[str, float]:
        figures = super().figures()
        figures["realised"] = float("nan") if self.realised is None else self.realised  # the cluster's
        return figures

    def health(self) -> dict[str, Any]:
        """For ``/health``: whose map this is, its version, and whether the owner answers."""
        return {
            "source": "decision-log",
            "version": self.version,
            "owner_epoch": None if self.seen is None else self.seen[0],  # changes when the owner restarts
            "owner_reachable": self.failures == 0 and self.updated_at is not None,
            "failed_exchanges": self.failures,
            "confirmed_at": self.updated_at,  # unix time the owner last answered (None: never yet)
        }

    def start(self) -> ClusterOnline:
        """Start exchanging (from inside the serving event loop)."""
        self.loop.start()
        return self

    async def exchange(self) -> bool:
        """Send the outboxes, adopt what the owner publishes; False (all kept) where it does not answer."""
        predictions, self.outbox = self.outbox, {}
        signals, self.signals_out = self.signals_out, []
        try:
            reply = await asyncio.wait_for(
                self.handle.online_exchange.remote(self.seen, predictions, signals), CALL_TIMEOUT_S
            )
        except Exception as exc:  # restarting or gone: keep routing with the snapshot in force
            if self.failures == 0:
                log.warning("online router: the owner did not answer (%s); routing with map %d", exc, self.version)
            self.failures += 1
            self.outbox = {**predictions, **self.outbox}  # bounded by ``choose``
            self.signals_out = (signals + self.signals_out)[-OUTBOX:]
            return False
        self.failures = 0
        if reply is not None:
            self.adopt(reply)
        self.updated_at = time.time()
        return True

    async def aclose(self) -> None:
        """Stop exchanging."""
        await self.loop.stop()
