"""The expert-host request router's choice (coserve.distributed.ray_choice.replica_ranks) on reports
made by hand, as Ray Serve's routing stats and replica metadata would carry them: no Ray needed."""

from __future__ import annotations

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
