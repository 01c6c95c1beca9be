"""Admission bounds split over the ingress replicas (coserve.distributed.admission_share), without
Ray: the shares of a bound sum to exactly the bound (at least 1 each), the roll of replicas heard
from lately gives each its place, and an Admission held to its share refuses past it."""

from __future__ import annotations

import pytest

from coserve.distributed.admission_share import IngressRoll, apply_share, share
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
