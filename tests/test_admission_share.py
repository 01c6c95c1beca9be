"""Admission bounds split over the ingress replicas (coserve.distributed.admission_share), without
Ray: the shares of a bound sum to exactly the bound (at least 1 each), the roll of replicas heard
from lately gives each its place, and an Admission held to its share refuses past it."""

from __future__ import annotations

import pytest

from coserve.distributed.admission_share import Drain, IngressRoll, apply_share, drain_report, follow_drain, share
from coserve.engine.call import Call
from coserve.errors import TooManyRequests
from coserve.server.admission import Admission
from coserve.types import Message, Request


def test_shares_sum_to_the_bound_and_never_fall_below_one() -> None:
    assert [share(10, i, 3) for i in range(3)] == [4, 3, 3]
    assert [share(64, i, 2) for i in range(2)] == [32, 32]
    assert [share(2, i, 3) for i in range(3)] == [1, 1, 1]  # more replicas than the bound: one each
    for bound in range(1, 30):
        for count in range(1, 8):
            shares = [share(bound, i, count) for i in range(count)]
            assert sum(shares) == max(bound, count) and max(shares) - min(shares) <= 1
    with pytest.raises(ValueError):
        share(4, 2, 2)


def test_the_roll_counts_replicas_heard_lately_in_sorted_order() -> None:
    roll = IngressRoll(seen_within_s=3.0)
    assert roll.heard("r2", now=0.0) == {"index": 0, "count": 1}
    assert roll.heard("r1", now=0.1) == {"index": 0, "count": 2}  # r1 sorts first
    assert roll.heard("r2", now=0.5) == {"index": 1, "count": 2}
    assert roll.heard("r2", now=3.2) == {"index": 0, "count": 1}  # r1 silent for 3.1 s: gone
    assert roll.heard("r1", now=3.3) == {"index": 0, "count": 2}  # and back once it reports


def test_an_admission_held_to_its_share_refuses_past_it() -> None:
    admission = Admission(64, 32)
    apply_share(admission, (5, 3), {"index": 1, "count": 2})
    assert (admission.max_pending, admission.max_pending_per_expert) == (2, 1)
    calls = [Call(Request((Message("user", "hi"),), "small")) for _ in range(3)]
    admission.admit(calls[0])
    admission.admit(calls[1])
    with pytest.raises(TooManyRequests):
        admission.admit(calls[2])
    apply_share(admission, (5, 3), None)  # the controller not heard yet: the whole bounds
    assert (admission.max_pending, admission.max_pending_per_expert) == (5, 3)
    admission.admit(calls[2])
    assert admission.pending == 3


def test_a_drain_is_over_once_every_live_replica_reported_nothing_admitted_after_it_began() -> None:
    """`coserve serve --ray`'s stop (session 13): the controller tells the ingresses to drain and
    waits until each replica heard lately has reported 0 admitted requests while draining."""
    drain = Drain()
    drain.report("r1", 0)  # before the drain began: not counted
    assert drain.over(["r1"]) is False
    drain.begin()
    drain.report("r1", None)  # r1 has not applied the drain yet (its count may still grow)
    assert drain.over(["r1", "r2"]) is False
    drain.report("r1", 2)
    drain.report("r2", 0)
    assert drain.over(["r1", "r2"]) is False  # r1 still holds two
    drain.report("r1", 0)
    assert drain.over(["r1", "r2"]) is True
    assert drain.over(["r1", "r2", "r3"]) is False  # a replica not heard from while draining
    assert drain.over([]) is True


def test_an_ingress_applies_the_drain_and_reports_its_count_once_it_refuses() -> None:
    """The report an ingress sends carries its admitted count only once its admission drains."""
    admission = Admission(max_pending=8, max_pending_per_expert=4)
    assert drain_report(admission) is None
    follow_drain(admission, {"draining": False})
    assert admission.draining is False
    follow_drain(admission, {"draining": True})
    assert admission.draining is True
    admission.pending = 3
    assert drain_report(admission) == 3
