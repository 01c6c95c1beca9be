"""The live feed of routing decisions: one small event per settled chat request, fanned out to
bounded per-subscriber queues (the dashboard's SSE stream, coserve.server.ui).

``DecisionFeed.publish`` is called by ``Outcomes.settle`` on the event loop; it never waits: a
subscriber whose queue is full loses that event (counted in its ``dropped``), so a slow browser
can never hold up a request. An event carries no prompt or completion text and no key.

This module knows nothing about HTTP, routing or how events are shown.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from coserve.engine.call import Call

__all__ = ["DecisionFeed", "Subscription", "decision_event"]

QUEUE_EVENTS = 256  # events a subscriber may fall behind by before it starts losing them
MAX_SUBSCRIBERS = 32  # open dashboard streams at once (each holds one queue)
RECENT_EVENTS = 50  # the last events, replayed to a new subscriber so its page does not start empty


def decision_event(call: Call) -> dict[str, Any] | None:
    """The feed's view of one settled call (None for a call never routed)."""
    decision = call.decision
    if decision is None:
        return None
    timings = call.timings
    answered = timings.first_token is not None
    ttft = timings.first_token - timings.arrival if timings.first_token is not None else None
    usage = call.usage
    return {
        "id": call.id,
        "time": time.time() - (time.monotonic() - timings.arrival),
        "status": call.status,
        "category": decision.category,
        "confidence": round(decision.confidence, 4),
        "chosen": decision.expert,
        "expert": call.expert if answered and call.expert else decision.expert,
        "reason": decision.reason,
        "fallback_from": list(call.tried) if answered else [],
        "ttft_s": round(ttft, 4) if ttft is not None else None,
        "latency_s": round(call.elapsed(), 4),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
    }


class Subscription:
    """One subscriber's bounded queue of events."""

    def __init__(self, size: int):
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1


class DecisionFeed:
    """Fan-out of decision events; ``publish`` never blocks and never raises."""

    def __init__(self, queue_events: int = QUEUE_EVENTS, max_subscribers: int = MAX_SUBSCRIBERS):
        self.queue_events = queue_events
        self.max_subscribers = max_subscribers
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._subscribers: set[Subscription] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def full(self) -> bool:
        return len(self._subscribers) >= self.max_subscribers

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """A subscription for the duration of the ``with`` block, starting with the recent events."""
        subscription = Subscription(self.queue_events)
        for event in self.recent:
            subscription.offer(event)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    async def aclose(self) -> None:
        """Nothing to stop in one process (a cluster's feed sends what it still holds)."""

    def publish(self, call: Call) -> None:
        """Keep the call's event among the recent ones and offer it to every subscriber."""
        event = decision_event(call)
        if event is not None:
            self.fan_out(event)

    def fan_out(self, event: dict[str, Any]) -> None:
        """Keep ``event`` among the recent ones and offer it to every subscriber (a Ray cluster's
        ingress feeds the cluster's events through here: coserve.distributed.shared_feed)."""
        self.recent.append(event)
        for subscription in tuple(self._subscribers):
            subscription.offer(event)
