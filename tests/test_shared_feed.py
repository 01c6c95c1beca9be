"""The dashboard's live feed for a Ray cluster, without Ray: two ingress replicas' ClusterFeeds over
the real DecisionLogService, joined by the stand-in handle of tests/test_cluster_state.py. Each
replica's subscribers see both replicas' events, once each; a new replica replays the recent ones;
events wait in the outbox while the deployment does not answer; a restarted deployment's new ring
is read from its start. The same classes run on Ray in tests/test_ray_state.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import write_library
from test_cluster_state import Handle

from coserve.distributed.shared_feed import ClusterFeed, EventRing
from coserve.distributed.shared_log import DecisionLogService
from coserve.engine.call import Call
from coserve.server.feed import RECENT_EVENTS
from coserve.types import Decision, Message, Request


def _call(expert: str) -> Call:
    call = Call(Request((Message("user", "hi"),), "coserve"))
    call.decision = Decision(expert=expert, category="chat", confidence=0.9, alternatives=(), reason="routed")
    return call


def test_each_replicas_subscribers_see_both_replicas_events_once(tmp_path: Path) -> None:
    handle = Handle(DecisionLogService(str(write_library(tmp_path, server={"log": {"path": "one.sqlite"}}))))
    first, second = ClusterFeed(handle, "r1"), ClusterFeed(handle, "r2")

    async def run() -> tuple[list[str], list[str], list[str]]:
        with first.subscribe() as seen_first, second.subscribe() as seen_second:
            calls = [_call("small"), _call("big"), _call("coder")]
            first.publish(calls[0])
            second.publish(calls[1])
            assert seen_first.queue.empty()  # nothing reaches a subscriber before the exchange
            assert await first.exchange() and await second.exchange()
            first.publish(calls[2])
            assert await first.exchange() and await second.exchange() and await first.exchange()
            ids = [c.id for c in calls]
            got_first = [seen_first.queue.get_nowait() for _ in range(seen_first.queue.qsize())]
            got_second = [seen_second.queue.get_nowait() for _ in range(seen_second.queue.qsize())]
            assert {e["id"]: e["ingress"] for e in got_first} == {ids[0]: "r1", ids[1]: "r2", ids[2]: "r1"}
            return ids, [e["id"] for e in got_first], [e["id"] for e in got_second]

    ids, got_first, got_second = asyncio.run(run())
    assert sorted(got_first) == sorted(ids) and sorted(got_second) == sorted(ids)  # each once
    assert got_second == ids  # r2 read r1's first, then its own, then r1's last: the ring's order

    late = ClusterFeed(handle, "r3")  # a replica started later replays the cluster's recent events
    asyncio.run(late.exchange())
    assert [e["id"] for e in late.recent] == ids


def test_events_wait_while_the_log_does_not_answer_and_a_new_ring_is_read_from_its_start(tmp_path: Path) -> None:
    handle = Handle(DecisionLogService(str(write_library(tmp_path, server={"log": {"path": "one.sqlite"}}))))
    feed = ClusterFeed(handle, "r1")
    asyncio.run(feed.exchange())
    handle.down = True
    calls = [_call("small"), _call("big")]
    feed.publish(calls[0])
    assert asyncio.run(feed.exchange()) is False and [e["id"] for e in feed.outbox] == [calls[0].id]
    feed.publish(calls[1])
    handle.down = False
    handle.service.events = EventRing()  # the deployment restarted: a new epoch, numbered from 0 again
    assert asyncio.run(feed.exchange()) is True
    assert [e["id"] for e in feed.recent] == [c.id for c in calls] and not feed.outbox
    last = _call("coder")
    feed.publish(last)
    asyncio.run(feed.aclose())  # the replica stops: what the outbox holds is sent first
    assert [e["id"] for _, e in handle.service.events.events][-1] == last.id


def test_the_ring_gives_a_new_reader_the_recent_events_and_a_reader_only_what_is_new() -> None:
    ring = EventRing(size=100)
    cursor, fresh = ring.exchange([{"n": i} for i in range(80)], None)
    assert [e["n"] for e in fresh] == list(range(80 - RECENT_EVENTS, 80)) and cursor == (ring.epoch, 80)
    cursor, fresh = ring.exchange([{"n": 80}], cursor)
    assert fresh == [{"n": 80}] and cursor == (ring.epoch, 81)
    assert ring.exchange([], ("another-epoch", 5))[1][0] == {"n": 0}  # all it holds
