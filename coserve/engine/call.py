"""The one object of a chat request in flight, carried from HTTP to the backend and back.

A ``Call`` is made once, by the server after the body is parsed (or by any other caller of the
engine), and every stage writes what it learns onto it instead of returning a copy:

    server     key, admission (``admitted``, ``held_expert``), status at the end
    engine     decision (route), expert and tried (fallback path), cascade steps, lease, usage, timings
    scheduler  queues the call itself under ``expert`` (``queued_at``, ``cancelled``)

Frozen dataclasses stay for the messages between stages that nobody may change:
``coserve.types.Request`` (what the client asked), ``Decision`` (the router's answer), ``Chunk``,
``Usage`` and ``Completion`` (what a backend produced), and the pool's ``Lease``.

This module knows nothing about HTTP, routers or runtimes; it only holds state.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from coserve.engine.pool import Lease
from coserve.types import Decision, Request, Usage

__all__ = ["Call", "Step", "Timings"]


@dataclass(frozen=True)
class Step:
    """One expert asked by a cascade (coserve.engine.cascade), in the order asked."""

    expert: str  # the expert that answered this step
    probability: float | None  # the answer check's P(good answer); None when the answer was not checked
    # "accepted" (returned) | "escalated" (the next expert was asked) | "failed" (no answer)
    # | "skipped" (never asked: the start gate sent the request to the next rung; probability: the gate's)
    outcome: str
    # "check" | "max_steps" | "no_stronger_expert" | "router_confidence" | "unchecked_stream" | "expert_failed"
    # | "guard" (the cascade guard held the category: single choice) | "start_gate"
    reason: str
    tokens: int | None = None  # completion tokens it generated (None: not known when recorded, a stream)

    def as_dict(self) -> dict[str, object]:
        probability = None if self.probability is None else round(self.probability, 4)
        return {
            "expert": self.expert,
            "probability": probability,
            "outcome": self.outcome,
            "reason": self.reason,
            "tokens": self.tokens,
        }


@dataclass
class Timings:
    """Monotonic seconds of a call's milestones (None until reached)."""

    arrival: float = field(default_factory=time.monotonic)  # the HTTP request arrived
    routed: float | None = None  # the decision exists
    first_token: float | None = None  # an expert produced its first chunk
    finished: float | None = None  # the last byte left (or the call failed)


@dataclass(eq=False)
class Call:
    """One chat request in flight: what was asked, who answers, how far it got."""

    request: Request
    key: str | None = None  # the caller's API key digest (hex), when keys are required
    decision: Decision | None = None
    expert: str | None = None  # the expert being tried now; at the end, the one that answered
    tried: list[str] = field(default_factory=list)  # experts that failed before ``expert`` (fallback path)
    node: str | None = None  # on a cluster, the node whose expert host answered (None in one process)
    steps: list[Step] = field(default_factory=list)  # a cascade's experts, in order (empty: single choice)
    lease: Lease | None = None  # the pinned expert while it generates
    usage: Usage | None = None  # from the last chunk
    status: str = "new"  # "new" | "queued" | "running" | then the outcome: "200", "499", "stream_error", "4xx"/"5xx"
    timings: Timings = field(default_factory=Timings)
    admitted: bool = False  # counted by the server's admission
    held_expert: str | None = None  # the expert whose admission bound this call counts against
    queued_at: float = 0.0  # monotonic seconds it joined its expert's queue
    cancelled: bool = False  # the caller went away while queued
    started: asyncio.Future[None] | None = field(default=None, repr=False)  # set once a lease is on the call

    @property
    def id(self) -> str:
        return self.request.id

    def elapsed(self) -> float:
        """Seconds from arrival to the end (or to now, while in flight)."""
        end = self.timings.finished if self.timings.finished is not None else time.monotonic()
        return end - self.timings.arrival
