"""The dashboard's live decision feed for a whole Ray cluster: every ingress replica's events reach
every replica's ``/ui/api/events`` subscribers, through the ``decision-log`` deployment.

``EventRing`` is what the deployment (coserve.distributed.shared_log.DecisionLogService) keeps: the
cluster's last ``RING_EVENTS`` events, numbered, with an ``epoch`` that changes when its replica
restarts. ``ClusterFeed`` is an ingress replica's ``DecisionFeed``: ``publish`` puts the event (the
single process's, plus the ``ingress`` replica that served it) on a bounded outbox and never waits;
every ``EXCHANGE_S`` one call (``feed_exchange``) sends the outbox and brings back the events added
since this replica's cursor, its own included, which are fanned out to its subscribers as the
single process does (the recent ones replayed to a new subscriber). One call per replica every
half second, whether or not a dashboard is open; none per request. Events reach a browser about
half a second to a second after the request settles. When the deployment does not answer, the
outbox keeps up to ``OUTBOX_EVENTS`` (the oldest go first) and is sent again; a restarted
deployment starts a new ring (its epoch), and the replicas read it from its start.

This module knows nothing about HTTP or Ray beyond the handle it is given.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import Any

from coserve.distributed.exchange_loop import ExchangeLoop
from coserve.engine.call import Call
from coserve.server.feed import RECENT_EVENTS, DecisionFeed, decision_event

__all__ = ["EXCHANGE_S", "ClusterFeed", "EventRing"]

log = logging.getLogger("coserve.distributed")

RING_EVENTS = 1024  # events the deployment keeps for replicas that fall behind
OUTBOX_EVENTS = 1024  # events an ingress replica keeps while the deployment does not answer
EXCHANGE_S = 0.5  # how often a replica sends its events and takes the cluster's
CALL_TIMEOUT_S = 5.0

Cursor = tuple[str, int]  # (epoch, next event number to read)


class EventRing:
    """The cluster's recent events, numbered from 0 in this epoch (the deployment's side)."""

    def __init__(self, size: int = RING_EVENTS):
        self.epoch = uuid.uuid4().hex
        self.next_number = 0
        self.events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=size)

    def exchange(self, events: list[dict[str, Any]], cursor: Cursor | None) -> tuple[Cursor, list[dict[str, Any]]]:
        """Add ``events``; return the new cursor and the events after ``cursor`` (a new reader, None:
        the last ``RECENT_EVENTS``; a cursor of another epoch: all this ring holds)."""
        for event in events:
            self.events.append((self.next_number, event))
            self.next_number += 1
        if cursor is None:
            fresh = [e for _, e in self.events][-RECENT_EVENTS:]
        elif cursor[0] != self.epoch:
            fresh = [e for _, e in self.events]
        else:
            fresh = [e for n, e in self.events if n >= cursor[1]]
        return (self.epoch, self.next_number), fresh


class ClusterFeed(DecisionFeed):
    """An ingress replica's feed over the decision-log deployment's handle (see the module doc)."""

    def __init__(self, handle: Any, replica: str, exchange_s: float = EXCHANGE_S):
        super().__init__()
        self.handle = handle
        self.replica = replica
        self.outbox: deque[dict[str, Any]] = deque(maxlen=OUTBOX_EVENTS)
        self.cursor: Cursor | None = None
        self.failures = 0  # exchanges in a row the deployment did not answer
        self.loop = ExchangeLoop(self.exchange, exchange_s)  # started from the serving event loop

    def publish(self, call: Call) -> None:
        """Queue the call's event for the cluster (never waits)."""
        event = decision_event(call)
        if event is not None:
            self.outbox.append({**event, "ingress": self.replica})

    def start(self) -> ClusterFeed:
        """Start exchanging (from inside the serving event loop)."""
        self.loop.start()
        return self

    async def exchange(self) -> bool:
        """Send the outbox, fan out what the cluster added since the cursor; False if not answered."""
        sending, self.outbox = list(self.outbox), deque(maxlen=OUTBOX_EVENTS)
        try:
            call = self.handle.feed_exchange.remote(sending, self.cursor)
            cursor, fresh = await asyncio.wait_for(call, CALL_TIMEOUT_S)
        except Exception as exc:  # restarting or gone: keep the events, oldest first, within the bound
            if self.failures == 0:
                log.warning("cluster decision feed: the decision log did not answer (%s); retrying", exc)
            self.failures += 1
            kept = deque(sending, maxlen=OUTBOX_EVENTS)
            kept.extend(self.outbox)
            self.outbox = kept
            return False
        self.failures = 0
        self.cursor = (str(cursor[0]), int(cursor[1]))
        for event in fresh:
            self.fan_out(event)
        return True

    async def aclose(self) -> None:
        """Stop exchanging, after one last exchange sends what the outbox holds."""
        await self.loop.stop()
        if self.outbox:
            await self.exchange()
