"""Admission bounds for the cluster: each ingress replica enforces its share of ``server.max_pending``
and ``server.max_pending_per_expert``, so the replicas together hold the configured bounds.

The placement controller (coserve.distributed.ray_placement) already hears from every ingress
replica twice a second (its traffic report); ``IngressRoll`` keeps, per replica, when it last did,
and gives each caller its index among the replicas heard from within ``SEEN_WITHIN_S`` and their
count. ``share(bound, index, count)`` splits a bound into whole shares that sum to exactly the
bound (the first ``bound % count`` replicas take one more), and never below 1: with more replicas
than the bound, each admits one (the sum is then ``count``). ``apply_share`` sets an ``Admission``'s
bounds to this replica's shares. No call is added per request: the share rides on the report.

The same report carries a stop's drain (``coserve serve --ray`` on SIGINT/SIGTERM): ``Drain`` is the
controller's side (begun, then over once every replica heard lately has reported nothing admitted
since it applied the drain), ``follow_drain`` and ``drain_report`` the ingress's.

This module knows nothing about Ray or HTTP: it counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from coserve.server.admission import Admission

__all__ = ["SEEN_WITHIN_S", "Drain", "IngressRoll", "apply_share", "drain_report", "follow_drain", "share"]

SEEN_WITHIN_S = 3.0  # a replica not heard from for this long (six missed reports) no longer counts


def share(bound: int, index: int, count: int) -> int:
    """Replica ``index``'s share of ``bound`` among ``count`` replicas (at least 1)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"replica {index} of {count}")
    return max(1, bound // count + (1 if index < bound % count else 0))


class IngressRoll:
    """The ingress replicas heard from lately, each with its index (replica ids in sorted order)."""

    def __init__(self, seen_within_s: float = SEEN_WITHIN_S):
        self.seen_within_s = seen_within_s
        self.last_seen: dict[str, float] = {}

    def heard(self, replica: str, now: float | None = None) -> dict[str, int]:
        """Note that ``replica`` reported; its ``index`` and the ``count`` of live replicas."""
        now = time.monotonic() if now is None else now
        self.last_seen[replica] = now
        for gone in [r for r, t in self.last_seen.items() if now - t > self.seen_within_s]:
            del self.last_seen[gone]
        live = sorted(self.last_seen)
        return {"index": live.index(replica), "count": len(live)}


def apply_share(admission: Admission, bounds: tuple[int, int], place: Mapping[str, Any] | None) -> None:
    """Set ``admission`` to this replica's shares of ``bounds`` (max_pending, max_pending_per_expert)
    given its ``place`` (``index``, ``count``); None (the controller not heard yet): the whole bounds."""
    if place is None:
        admission.max_pending, admission.max_pending_per_expert = bounds
        return
    index, count = int(place["index"]), int(place["count"])
    admission.max_pending = share(bounds[0], index, count)
    admission.max_pending_per_expert = share(bounds[1], index, count)


class Drain:
    """The controller's side of a stop: whether the ingresses drain, and what each has left."""

    def __init__(self) -> None:
        self.begun = False
        self.admitted: dict[str, int] = {}  # per replica, its count reported while draining

    def begin(self) -> None:
        self.begun = True
        self.admitted.clear()

    def report(self, replica: str, admitted: int | None) -> None:
        """A replica's report: its admitted count once it drains, None before it does."""
        if self.begun and admitted is not None:
            self.admitted[replica] = admitted

    def over(self, live: Iterable[str]) -> bool:
        """Begun, and every ``live`` replica has reported nothing admitted while draining."""
        return self.begun and all(self.admitted.get(replica) == 0 for replica in live)


def follow_drain(admission: Admission, view: Mapping[str, Any]) -> None:
    """Drain ``admission`` (new requests 503 ``draining``) once the controller's ``view`` says so."""
    if view.get("draining"):
        admission.draining = True


def drain_report(admission: Admission) -> int | None:
    """What an ingress reports: its admitted count once it drains (None before: it may still grow)."""
    return admission.pending if admission.draining else None
