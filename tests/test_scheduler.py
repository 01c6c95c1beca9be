"""The scheduler: stay on the running expert, prefer loaded experts, bounded wait, prefetch order."""

from __future__ import annotations

import math

from coserve.engine.call import Call
from coserve.engine.scheduler import Scheduler
from coserve.types import Message, Request


def _queue(s: Scheduler, *items: tuple[str, float]) -> list[Call]:
    calls = [Call(Request((Message("user", "hi"),), expert), expert=expert, queued_at=at) for expert, at in items]
    for call in calls:
        s.submit(call)
    return calls


def test_nothing_queued_picks_nothing() -> None:
    assert Scheduler().pick(None, [], now=0.0) is None


def test_stays_on_the_running_expert_while_it_has_work() -> None:
    s = Scheduler(max_wait_s=10)
    _queue(s, ("a", 0.0), ("b", 1.0), ("a", 2.0))
    pick = s.pick("b", ["b"], now=3.0)
    assert pick is not None and (pick.expert, pick.reason) == ("b", "stay")
    assert pick.upcoming == ("a",)


def test_prefers_a_loaded_expert_over_an_older_request() -> None:
    s = Scheduler(max_wait_s=10)
    _queue(s, ("a", 0.0), ("b", 1.0))
    pick = s.pick(None, ["b"], now=2.0)
    assert pick is not None and (pick.expert, pick.reason) == ("b", "resident")


def test_oldest_request_wins_when_nothing_is_loaded() -> None:
    s = Scheduler(max_wait_s=10)
    _queue(s, ("b", 1.0), ("a", 0.5), ("c", 0.7))
    pick = s.pick(None, [], now=2.0)
    assert pick is not None and (pick.expert, pick.reason) == ("a", "oldest")
    assert pick.upcoming == ("c", "b")  # soonest needed first


def test_aging_bounds_the_wait_of_a_rare_expert() -> None:
    s = Scheduler(max_wait_s=5)
    _queue(s, ("rare", 0.0), ("busy", 1.0), ("busy", 2.0))
    stay = s.pick("busy", ["busy"], now=4.9)
    assert stay is not None and stay.expert == "busy"
    aged = s.pick("busy", ["busy"], now=5.1)
    assert aged is not None and (aged.expert, aged.reason) == ("rare", "aged")


def test_zero_wait_bound_is_first_come_first_served() -> None:
    s = Scheduler(max_wait_s=0.0)
    _queue(s, ("a", 0.0), ("b", 1.0), ("a", 2.0))
    pick = s.pick("b", ["b"], now=3.0)
    assert pick is not None and pick.expert == "a"


def test_take_skips_cancelled_and_respects_the_limit() -> None:
    s = Scheduler()
    calls = _queue(s, ("a", 0.0), ("a", 1.0), ("a", 2.0), ("a", 3.0))
    calls[1].cancelled = True
    taken = s.take("a", 2)
    assert taken == [calls[0], calls[2]]
    assert s.depth() == {"a": 1}
    assert s.take("a", 5) == [calls[3]] and s.pending() == 0


def test_next_use_is_the_oldest_live_arrival() -> None:
    s = Scheduler()
    calls = _queue(s, ("a", 3.0), ("b", 1.0), ("a", 4.0))
    calls[0].cancelled = True
    assert s.next_use() == {"a": 4.0, "b": 1.0}
    s.take("b", 1)
    assert s.next_use()["b"] == math.inf


def test_cancelled_only_queue_is_not_picked() -> None:
    s = Scheduler()
    (call,) = _queue(s, ("a", 0.0))
    call.cancelled = True
    assert s.pick(None, [], now=1.0) is None


def test_a_turn_is_not_preempted_by_aging_until_its_queued_requests_are_taken() -> None:
    s = Scheduler(max_wait_s=5)
    _queue(s, ("a", 0.0), ("b", 1.0), ("b", 2.0), ("b", 3.0))
    s.take("b", 2)  # b's turn begins with 3 queued: 1 still owed
    stay = s.pick("b", ["b"], now=100.0)  # a waited 100 s > 5 s, but b's turn is not over
    assert stay is not None and (stay.expert, stay.reason) == ("b", "stay")
    _queue(s, ("b", 50.0))  # arrived during the turn: not part of it
    s.take("b", 1)
    aged = s.pick("b", ["b"], now=100.0)
    assert aged is not None and (aged.expert, aged.reason) == ("a", "aged")


def test_arrival_order_always_picks_the_oldest_request() -> None:
    s = Scheduler(max_wait_s=10, arrival_order=True)
    _queue(s, ("a", 0.0), ("b", 1.0), ("b", 2.0))
    s.take("b", 1)  # a turn means nothing in arrival order
    pick = s.pick("b", ["b"], now=2.5)
    assert pick is not None and (pick.expert, pick.reason) == ("a", "oldest")


def test_withdraw_takes_a_queued_call_out_once() -> None:
    s = Scheduler()
    first, second = _queue(s, ("a", 0.0), ("a", 1.0))
    assert s.withdraw(first) and not s.withdraw(first)  # the second time it is no longer queued
    assert s.depth() == {"a": 1} and s.take("a", 5) == [second]
    assert not s.withdraw(second)  # taken: not queued any more
