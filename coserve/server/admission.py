"""Admission: how many chat requests the server holds at once, in all and per expert.

"Admit" means one thing in coserve: let a chat request into the server, counting it against
these bounds. ``Admission.admit(call)`` counts a parsed request before it is routed (past
``max_pending``: TooManyRequests, 429 with Retry-After); ``claim(call)`` then counts it against its
routed expert (past ``max_pending_per_expert``: 429). Once ``draining`` is set (shutdown), every
new request is refused with Draining (503). ``release(call)`` gives both back exactly once,
however the request ends; the hold is written on the Call itself (``admitted``, ``held_expert``).

This module knows nothing about HTTP, experts' runtimes or the scheduler's queues: it only counts.
"""

from __future__ import annotations

import asyncio
import threading
import time

from coserve.engine.call import Call
from coserve.errors import Draining, TooManyRequests

__all__ = ["Admission"]

RETRY_AFTER_S = 1  # seconds a refused client is told to wait (429)
SETTLE_POLL_S = 0.01  # how often ``settled`` looks at the count
DRAIN_RETRY_AFTER_S = 5  # seconds a client is told to wait while the server shuts down (503)


class Admission:
    """Counters of admitted requests with their bounds, and the draining flag."""

    def __init__(self, max_pending: int, max_pending_per_expert: int):
        self.max_pending = max_pending
        self.max_pending_per_expert = max_pending_per_expert
        self.draining = False
        self.pending = 0  # requests admitted and not yet released
        self.per_expert: dict[str, int] = {}  # expert -> admitted requests routed to it
        self._lock = threading.Lock()

    def check_open(self) -> None:
        """Draining (503) once the server is shutting down."""
        if self.draining:
            raise Draining("the server is shutting down; retry on another instance", retry_after=DRAIN_RETRY_AFTER_S)

    def admit(self, call: Call) -> None:
        """Count one new request, or TooManyRequests / Draining."""
        self.check_open()
        with self._lock:
            if call.admitted:
                return
            if self.pending >= self.max_pending:
                raise TooManyRequests(
                    f"the server holds {_requests(self.max_pending)} already; retry later", retry_after=RETRY_AFTER_S
                )
            self.pending += 1
            call.admitted = True

    def claim(self, call: Call) -> None:
        """Count an admitted, routed request against its expert; TooManyRequests past its bound."""
        assert call.decision is not None, "route the call first"
        expert = call.decision.expert
        with self._lock:
            if not call.admitted or call.held_expert is not None:
                return
            held = self.per_expert.get(expert, 0)
            if held >= self.max_pending_per_expert:
                raise TooManyRequests(
                    f"expert {expert!r} holds {_requests(self.max_pending_per_expert)} already; retry later",
                    retry_after=RETRY_AFTER_S,
                )
            self.per_expert[expert] = held + 1
            call.held_expert = expert

    async def settled(self, within_s: float) -> int:
        """Wait up to ``within_s`` for every admitted request to be released; returns how many are left.
        (At shutdown, the requests the drain deadline cancelled end on the event loop's next turns.)"""
        deadline = time.monotonic() + within_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
        return self.pending

    def release(self, call: Call) -> None:
        """Give the call's counts back; later calls do nothing."""
        with self._lock:
            if not call.admitted:
                return
            call.admitted = False
            self.pending -= 1
            if call.held_expert is not None:
                left = self.per_expert[call.held_expert] - 1
                if left:
                    self.per_expert[call.held_expert] = left
                else:
                    del self.per_expert[call.held_expert]
                call.held_expert = None


def _requests(n: int) -> str:
    return f"{n} request" if n == 1 else f"{n} requests"
