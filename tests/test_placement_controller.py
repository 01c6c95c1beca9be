"""The placement controller without Ray (coserve.distributed.controller): re-planning on a node
leaving and returning and on traffic drift, staged two-phase on stand-in hosts; and the pure helpers
of the Ray wiring (alive nodes, the ingress's placement book, merged metrics).

The placements expected here were worked out by hand from the planner's objective (busiest node's
share + cold-load share + 0.05 per replica started): with three experts of 10, 20 and 30 MiB and
equal traffic, two 32 MiB nodes hold big alone and coder + small; one 32 MiB node holds all three
swapped through 30 MiB of room; on two 64 MiB nodes coder is split between them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coserve.distributed.cluster import Cluster, Footprint, NodeSpec
from coserve.distributed.controller import PlacementController
from coserve.distributed.merged_metrics import merge_expositions
from coserve.distributed.planner import plan
from coserve.distributed.ray_choice import HostBook
from coserve.distributed.ray_placement import alive_nodes
from coserve.metrics import Metrics

MiB = 2**20
FOOTPRINTS = {"small": Footprint(10 * MiB), "coder": Footprint(20 * MiB), "big": Footprint(30 * MiB)}
EQUAL = {"small": 1 / 3, "coder": 1 / 3, "big": 1 / 3}


class Hosts:
    """Stand-in hosts: record every call with what the ingresses were being told at that moment."""

    def __init__(self, controller_view: Any = None, fail_on: tuple[str, str, str] | None = None):
        self.calls: list[tuple[str, str, str, dict[str, list[str]]]] = []
        self.view = controller_view
        self.fail_on = fail_on
        self.down: set[str] = set()  # nodes whose host does not answer

    def _record(self, action: str, node: str, expert: str) -> None:
        if node in self.down or (action, node, expert) == self.fail_on:
            raise RuntimeError(f"host {node} unreachable")
        self.calls.append((action, node, expert, self.view().get("placed", {}) if self.view else {}))

    async def add(self, node: str, expert: str, resident: bool) -> None:
        self._record("add+pin" if resident else "add", node, expert)

    async def remove(self, node: str, expert: str) -> None:
        self._record("remove", node, expert)

    async def pin(self, node: str, expert: str, pinned: bool) -> None:
        self._record("pin" if pinned else "unpin", node, expert)

    async def assign(self, node: str, experts: list[str], resident: list[str]) -> None:
        self._record("assign", node, ",".join(f"{e}+pin" if e in resident else e for e in experts))


def _controller(size_mib: int, fail_on: tuple[str, str, str] | None = None) -> tuple[PlacementController, Hosts]:
    cluster = Cluster(nodes=(NodeSpec(name="a", ram=size_mib * MiB), NodeSpec(name="b", ram=size_mib * MiB)))
    placement = plan(cluster, FOOTPRINTS, EQUAL, required=sorted(FOOTPRINTS))
    hosts = Hosts(fail_on=fail_on)
    controller = PlacementController(cluster, FOOTPRINTS, placement, hosts, grace_s=0.0)
    hosts.view = controller.view
    return controller, hosts


def test_start_view_is_the_plan() -> None:
    controller, hosts = _controller(32)
    view = controller.view()
    assert view["version"] == 1 and view["placed"] == {"a": ["big"], "b": ["coder", "small"]}
    assert asyncio.run(controller.tick({"a", "b"})) is None  # nothing changed: no re-plan
    assert controller.view()["version"] == 1
    # The first tick sets every host to the placement (after a restart of the controller, the hosts
    # may carry a later one); later ticks leave them alone.
    assert [c[:3] for c in hosts.calls] == [("assign", "a", "big+pin"), ("assign", "b", "coder+pin,small+pin")]
    asyncio.run(controller.tick({"a", "b"}))
    assert len(hosts.calls) == 2


def test_a_node_that_leaves_has_its_experts_re_placed_on_the_survivor() -> None:
    controller, hosts = _controller(32)
    reason = asyncio.run(controller.tick({"a"}))
    assert reason == "nodes left: b"
    # big is unpinned to make swap room, then coder and small are added (swapped) before they are
    # advertised on a; b is withdrawn at once (before any host call).
    assert [c[:3] for c in hosts.calls] == [
        ("assign", "a", "big+pin"),
        ("unpin", "a", "big"),
        ("add", "a", "coder"),
        ("add", "a", "small"),
    ]
    assert all(c[3]["b"] == [] and c[3]["a"] == ["big"] for c in hosts.calls)
    view = controller.view()
    assert view["placed"] == {"a": ["big", "coder", "small"], "b": []} and view["alive"] == ["a"]
    assert view["version"] > 1 and view["unplaced"] == []


def test_a_node_that_returns_gets_experts_again_two_phase() -> None:
    controller, hosts = _controller(32)
    asyncio.run(controller.tick({"a"}))
    hosts.calls.clear()
    reason = asyncio.run(controller.tick({"a", "b"}))
    assert reason == "nodes joined: b"
    steps = [c[:3] for c in hosts.calls]
    assert steps == [
        ("assign", "b", ""),  # the restarted host's start-time experts are dropped first
        ("add+pin", "b", "big"),
        ("remove", "a", "big"),
        ("pin", "a", "coder"),
        ("pin", "a", "small"),
    ]
    at = {c[:3]: c[3] for c in hosts.calls}
    assert "big" not in at[("add+pin", "b", "big")]["b"]  # not advertised on b before it is ready there
    assert at[("remove", "a", "big")]["b"] == ["big"]  # the new replica serves before the old one goes
    assert "big" not in at[("remove", "a", "big")]["a"]  # and the old one was withdrawn before its drain
    assert controller.view()["placed"] == {"a": ["coder", "small"], "b": ["big"]}


def test_a_node_whose_host_is_not_up_yet_joins_later() -> None:
    controller, hosts = _controller(32)
    asyncio.run(controller.tick({"a"}))
    hosts.down.add("b")
    assert asyncio.run(controller.tick({"a", "b"})) is None  # Ray sees b, its host does not answer yet
    assert controller.view()["alive"] == ["a"]
    hosts.down.clear()
    assert asyncio.run(controller.tick({"a", "b"})) == "nodes joined: b"


def test_traffic_drift_moves_an_expert_two_phase() -> None:
    controller, hosts = _controller(64)
    assert controller.view()["placed"] == {"a": ["big", "coder"], "b": ["coder", "small"]}
    controller.report({"big": 19})
    assert asyncio.run(controller.tick({"a", "b"})) is None  # fewer than 20 requests: planned traffic holds
    hosts.calls.clear()  # the first tick's assignments
    controller.report({"big": 1, "nowhere": 5})  # an expert that is not placeable is not counted
    reason = asyncio.run(controller.tick({"a", "b"}))
    assert reason is not None and reason.startswith("traffic drifted 0.667")
    # big gets a second replica on b (ready before anything goes), then coder leaves b.
    assert [c[:3] for c in hosts.calls] == [("add+pin", "b", "big"), ("remove", "b", "coder")]
    assert hosts.calls[1][3] == {"a": ["big", "coder"], "b": ["big", "small"]}
    assert controller.view()["placed"] == {"a": ["big", "coder"], "b": ["big", "small"]}
    assert controller.counts == {}  # a new window starts with the new plan


def test_an_expert_that_fits_no_node_alive_is_unplaced_until_one_returns() -> None:
    cluster = Cluster(nodes=(NodeSpec(name="a", ram=16 * MiB), NodeSpec(name="b", ram=32 * MiB)))
    placement = plan(cluster, FOOTPRINTS, EQUAL, required=sorted(FOOTPRINTS))
    assert [r.expert for r in placement.on("b")] == ["big", "coder"]  # only b can hold big or coder
    hosts = Hosts()
    controller = PlacementController(cluster, FOOTPRINTS, placement, hosts, grace_s=0.0)
    assert asyncio.run(controller.tick({"a"})) == "nodes left: b"
    view = controller.view()
    assert view["unplaced"] == ["big", "coder"] and view["placed"] == {"a": ["small"], "b": []}
    assert asyncio.run(controller.tick({"a"})) is None  # it does not re-plan again and again
    assert asyncio.run(controller.tick({"a", "b"})) == "nodes joined: b"
    assert controller.view()["unplaced"] == [] and controller.view()["placed"]["b"] == ["big", "coder"]


def test_a_failed_host_call_stops_the_staging_before_anything_is_withdrawn() -> None:
    controller, hosts = _controller(32, fail_on=("add+pin", "b", "big"))
    asyncio.run(controller.tick({"a"}))
    before = controller.placement
    reason = asyncio.run(controller.tick({"a", "b"}))
    assert reason == "nodes joined: b"
    assert controller.placement is before  # not in force: the next tick tries again
    assert (controller.view()["error"] or "").startswith("start big on b failed")
    assert [c[:3] for c in hosts.calls if c[0] == "remove"] == []  # big still served on a
    assert "big" in controller.view()["placed"]["a"]


# -- the pure helpers of the Ray wiring ------------------------------------------------------------
def test_alive_nodes_reads_the_coserve_resources_of_alive_ray_nodes() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0, "coserve-node-a": 1.0}},
        {"Alive": False, "Resources": {"coserve-node-b": 1.0}},
        {"Alive": True, "Resources": {"CPU": 1.0}},
    ]
    assert alive_nodes(nodes) == {"a"}


def test_book_follows_a_new_placement_and_keeps_what_it_knows() -> None:
    book = HostBook({"a": ["big"], "b": ["small"]})
    book.report("b", {"small": "active"})
    book.in_flight["b"] = 2
    book.place({"a": ["big", "small"], "b": []}, version=3)
    assert book.version == 3 and book.hosting("small") == ["a"]
    assert book.in_flight["b"] == 2 and book.tiers["b"] == {"small": "active"}
    book.withdraw("a", "small")
    assert book.choose("small", now=0.0) is None


def test_metrics_of_the_hosts_are_merged_with_a_node_label() -> None:
    own, host_a, host_b = Metrics(), Metrics(), Metrics()
    own.requests.labels("200").inc(3)
    host_a.pool_evictions.labels("big").inc(2)
    host_b.pool_evictions.labels("small").inc(1)
    text = merge_expositions(own.text(), {"a": host_a.text(), "b": host_b.text(), "c": None})
    families = {f.name: f for f in text_string_to_metric_families(text)}  # parses as one exposition
    evictions = {(s.labels["node"], s.labels["expert"]): s.value for s in families["coserve_expert_evictions"].samples}
    assert evictions == {("a", "big"): 2.0, ("b", "small"): 1.0}
    requests = [s for s in families["coserve_requests"].samples if s.labels.get("status") == "200"]
    assert [(s.labels, s.value) for s in requests] == [({"status": "200"}, 3.0)]  # the ingress's own: no node
    assert families["coserve_cluster_hosts_unreachable"].samples[0].value == 1.0
    assert text.count("# TYPE coserve_expert_evictions_total counter") == 1


@pytest.mark.parametrize("size", [32, 64])
def test_a_planned_change_keeps_each_expert_advertised_somewhere(size: int) -> None:
    """A node's death withdraws its experts at once; every step of the changes after it (the node
    returning, then a drift) leaves each expert advertised on some node."""
    controller, hosts = _controller(size)
    asyncio.run(controller.tick({"a"}))
    hosts.calls.clear()
    asyncio.run(controller.tick({"a", "b"}))
    controller.report({"small": 30})
    asyncio.run(controller.tick({"a", "b"}))
    assert hosts.calls
    for _, _, _, placed in hosts.calls:
        served = {e for experts in placed.values() for e in experts}
        assert served == set(FOOTPRINTS)


def test_the_event_loop_answers_while_a_re_plan_solves(monkeypatch: pytest.MonkeyPatch) -> None:
    # A re-plan at 1,000 experts may solve for its whole time limit: the controller's replica must
    # still answer the ingresses' reports and the hosts' claims meanwhile (the solve runs in a thread).
    import threading

    import coserve.distributed.controller as controller_module

    solving, answered = threading.Event(), threading.Event()
    real_replan = controller_module.replan

    def slow_replan(*args: Any, **kwargs: Any) -> Any:
        solving.set()
        assert answered.wait(10), "the event loop did not run while the solve was in progress"
        return real_replan(*args, **kwargs)

    monkeypatch.setattr(controller_module, "replan", slow_replan)
    controller, _ = _controller(32)

    async def other_work() -> None:  # stands in for a report or a claim handled meanwhile
        while not solving.is_set():
            await asyncio.sleep(0.01)
        answered.set()

    async def both() -> str | None:
        reason, _ = await asyncio.gather(controller.tick({"a"}), other_work())
        return reason

    assert asyncio.run(both()) == "nodes left: b"
    assert controller.view()["placed"] == {"a": ["big", "coder", "small"], "b": []}
