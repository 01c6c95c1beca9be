"""The expert-host request router's choice (coserve.distributed.ray_choice.replica_ranks) on reports
made by hand, as Ray Serve's routing stats and replica metadata would carry them (no Ray needed);
and the router class itself over stand-in replicas (Ray installed, no cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coserve.distributed.ray_choice import HostView, ReplicaReport, choose_host, rank_hosts, replica_ranks
from coserve.types import Tier

REPORTS = {
    "r-a": ReplicaReport("a", {"big": "active", "small": "disk"}, in_flight=5),
    "r-b": ReplicaReport("b", {"small": "ram", "coder": "ram"}, in_flight=0),
    "r-c": ReplicaReport("c", {"small": "ram", "coder": "active"}, in_flight=2),
    "r-new": ReplicaReport(None),  # started, has not said which node yet
}


def _stream(expert: str, nodes: list[str]) -> list[list[str]]:
    return replica_ranks("stream", ["request", expert, nodes], REPORTS)


def test_active_then_ram_then_disk_and_only_where_placed() -> None:
    # small: RAM on b and c (b less loaded first), DISK on a
    assert _stream("small", ["a", "b", "c"]) == [["r-b", "r-c"], ["r-a"]]
    # coder: ACTIVE on c beats RAM on b even though c is busier
    assert _stream("coder", ["b", "c"]) == [["r-c"], ["r-b"]]
    # big is placed on a only: the other replicas are never candidates, however idle
    assert _stream("big", ["a"]) == [["r-a"]]


def test_an_expert_placed_after_the_last_report_counts_as_disk() -> None:
    # the controller added coder to a (placed: a and b), a's stats do not list it yet
    assert _stream("coder", ["a", "b"]) == [["r-b"], ["r-a"]]


def test_no_allowed_replica_means_no_candidates() -> None:
    assert _stream("small", []) == []
    assert _stream("small", ["d"]) == []  # a node with no replica (its node is down)


def test_calls_naming_a_node_go_to_that_nodes_replica_only() -> None:
    assert replica_ranks("state", ["b"], REPORTS) == [["r-b"]]
    assert replica_ranks("add", ["c", "big", True], REPORTS) == [["r-c"]]
    assert replica_ranks("state", ["d"], REPORTS) == []


def test_rank_hosts_agrees_with_choose_host() -> None:
    views = [
        HostView("d", Tier.DISK, 0),
        HostView("c", Tier.RAM, 4),
        HostView("b", Tier.RAM, 1),
        HostView("a", None, 0),
        HostView("e", Tier.ACTIVE, 9),
    ]
    assert rank_hosts(views) == [["e"], ["b", "c"], ["d"]]
    assert choose_host(views) == rank_hosts(views)[0][0] == "e"
    assert rank_hosts([HostView("a", None, 0)]) == []


# -- the router class itself (needs Ray installed, no cluster) ---------------------------------------
class _Replica:
    """What ExpertRouter reads of a Ray Serve RunningReplica."""

    def __init__(self, replica_id: str, node: str, tiers: dict[str, str], in_flight: int = 0):
        self.replica_id, self.replica_metadata = replica_id, {"node": node}
        self.routing_stats = {"node": node, "tiers": tiers, "in_flight": in_flight}


def _router() -> Any:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from coserve.distributed.ray_router import ExpertRouter

    return ExpertRouter(DeploymentID(name="expert-host", app_name="coserve"), DeploymentHandleSource.UNKNOWN)


def _pending(method: str, args: list[Any], internal_id: str = "req-1") -> Any:
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    metadata = RequestMetadata(request_id="r", internal_request_id=internal_id, call_method=method)
    return PendingRequest(args=args, kwargs={}, metadata=metadata)


def test_the_router_ranks_replicas_from_their_reports() -> None:
    router = _router()
    replicas = [_Replica("ra", "a", {"small": "disk"}), _Replica("rb", "b", {"small": "ram"}), _Replica("rc", "c", {})]

    async def choose(method: str, args: list[Any]) -> list[list[str]]:
        pending = _pending(method, args)  # its future needs the running loop
        groups = await router.choose_replicas(replicas, pending)
        assert pending.routing_context.should_backoff  # nothing fits now: Ray waits before asking again
        return [[r.replica_id for r in group] for group in groups]

    assert asyncio.run(choose("stream", ["req", "small", ["a", "b"]])) == [["rb"], ["ra"]]
    assert asyncio.run(choose("health", ["c"])) == [["rc"]]
    assert asyncio.run(choose("stream", ["req", "small", []])) == []


def test_the_router_gives_a_replica_to_the_call_it_was_chosen_for() -> None:
    """Two pending calls with one internal_request_id (as sibling handle calls made while serving one
    request have): the replica chosen for the second goes to the second, not to the first."""
    router = _router()

    async def run() -> tuple[bool, Any]:
        first, second = _pending("state", ["a"], "same"), _pending("state", ["b"], "same")
        for pending in (first, second):
            router._pending_requests_to_fulfill.append(pending)
            router._add_pending_request_to_indices(pending)
        router._fulfill_next_pending_request("replica-of-b", second.metadata)
        return first.future.done(), second.future.result()

    assert asyncio.run(run()) == (False, "replica-of-b")
    assert router.max_num_routing_tasks == 50  # Ray's hard cap, whatever the replica count
