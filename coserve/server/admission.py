"""Admission control: how many chat requests the server holds at once, in all and per expert.

A request is admitted (``Admission.admit``) before it is parsed and routed, and claims its routed
expert (``Ticket.claim``) once the decision exists; past either bound it is refused with
TooManyRequests (429, Retry-After). Once ``draining`` is set (shutdown), every new request is
refused with Draining (503). A ticket is released exactly once, however the request ends.

This module knows nothing about HTTP, experts' runtimes or the scheduler's queues: it only counts.
"""

from __future__ import annotations

import threading

from coserve.errors import Draining, TooManyRequests

__all__ = ["Admission", "Ticket"]

RETRY_AFTER_S = 1  # seconds a refused client is told to wait (429)
DRAIN_RETRY_AFTER_S = 5  # seconds a client is told to wait while the server shuts down (503)


class Ticket:
    """One admitted request's hold on the counters."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self.expert: str | None = None  # the expert this request counts against, once claimed
        self.released = False

    def claim(self, expert: str) -> None:
        """Count the request against ``expert``; TooManyRequests past its bound."""
        self._admission._claim(self, expert)

    def release(self) -> None:
        """Give the slots back; later calls do nothing."""
        self._admission._release(self)


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

    def admit(self) -> Ticket:
        """A ticket for one new request, or TooManyRequests / Draining."""
        self.check_open()
        with self._lock:
            if self.pending >= self.max_pending:
                raise TooManyRequests(
                    f"the server holds {self.max_pending} requests already; retry later", retry_after=RETRY_AFTER_S
                )
            self.pending += 1
        return Ticket(self)

    def _claim(self, ticket: Ticket, expert: str) -> None:
        with self._lock:
            if ticket.released or ticket.expert is not None:
                return
            held = self.per_expert.get(expert, 0)
            if held >= self.max_pending_per_expert:
                raise TooManyRequests(
                    f"expert {expert!r} holds {self.max_pending_per_expert} requests already; retry later",
                    retry_after=RETRY_AFTER_S,
                )
            self.per_expert[expert] = held + 1
            ticket.expert = expert

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            self.pending -= 1
            if ticket.expert is not None:
                left = self.per_expert[ticket.expert] - 1
                if left:
                    self.per_expert[ticket.expert] = left
                else:
                    del self.per_expert[ticket.expert]
