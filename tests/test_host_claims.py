"""Which expert-host replica serves which cluster-file node (coserve.distributed.host_claims), and the
placement controller's ``claim_host`` over it (coserve.distributed.ray_placement), without Ray: every
live replica holds a distinct node, a claim asked again gets the same node, and a replacement takes
the node of the replica that died, whatever its local rank says."""

from __future__ import annotations

import asyncio

import pytest
from test_controller_state import MemoryStore
from test_placement_controller import _controller

from coserve.distributed.host_claims import HostClaims
from coserve.distributed.ray_placement import PlacementService

NODES = ["a", "b", "c"]


def test_each_live_replica_gets_a_distinct_node_its_first_guess_when_free() -> None:
    claims = HostClaims()
    asked: list[str] = []

    def alive(replica: str) -> bool:
        asked.append(replica)
        return True

    assert claims.claim("r1", NODES, "b", alive) == "b"
    assert claims.claim("r2", NODES, "b", alive) == "a"  # b is held: the first free one in name order
    assert claims.claim("r3", NODES, None, alive) == "c"
    assert claims.claim("r2", NODES, "c", alive) == "a"  # asked again: the node it holds
    assert claims.claim("r4", NODES, "a", alive) is None  # every node held by a live replica
    assert claims.holders == {"a": "r2", "b": "r1", "c": "r3"}
    assert sorted(set(asked)) == ["r1", "r2", "r3"]


def test_a_replacement_takes_the_dead_replicas_node_even_when_its_rank_names_another() -> None:
    claims = HostClaims({"a": "r1", "b": "r2", "c": "r3"})
    dead = {"r1"}
    # Ray Serve renumbered the ranks after r1 died: the replacement's local rank now names c
    assert claims.claim("r4", NODES, "c", lambda r: r not in dead) == "a"
    assert claims.holders == {"a": "r4", "b": "r2", "c": "r3"}
    # the holder of a node outside the candidates is never asked about
    assert claims.claim("r5", ["b"], "b", lambda r: {"r2": False}[r]) == "b"
    assert claims.release("r5") == ["b"] and claims.holders == {"a": "r4", "c": "r3"}


def test_the_claims_round_trip_as_bytes_and_bad_bytes_are_refused() -> None:
    claims = HostClaims({"b": "r2", "a": "r1"})
    assert HostClaims.from_bytes(claims.to_bytes()).holders == {"a": "r1", "b": "r2"}
    with pytest.raises(ValueError, match="node -> replica"):
        HostClaims.from_bytes(b'{"a": 3}')


def test_the_controller_grants_claims_saves_them_and_a_restarted_one_keeps_them() -> None:
    controller, _ = _controller(32)  # the cluster file's nodes: a and b
    args = (controller.cluster, controller.footprints, controller.placement, None)
    store, claims_store, dead = MemoryStore(), MemoryStore(), set[str]()

    def service() -> PlacementService:
        return PlacementService(*args, store=store, claims_store=claims_store, is_alive=lambda r: r not in dead)

    def claim(svc: PlacementService, replica: str, guess: str) -> str | None:
        granted = asyncio.run(svc.claim_host(replica, ["a", "b"], guess))
        return None if granted is None else str(granted["node"])

    first = service()
    assert [claim(first, "r1", "a"), claim(first, "r2", "a"), claim(first, "r3", "a")] == ["a", "b", None]
    assert claims_store.puts == 2  # one write per claim granted, none for the refused one
    again = service()  # the controller's replica restarted: the claims come back from the store
    assert again.host_claims() == {"a": "r1", "b": "r2"}
    dead.add("r2")
    assert claim(again, "r3", "a") == "b"
    assert again.host_claims() == {"a": "r1", "b": "r3"}
    # the claim carries the placement in force on the node (big alone on a; coder + small on b, pinned)
    assert asyncio.run(again.claim_host("r3", ["a", "b"], None)) == {
        "node": "b",
        "experts": ["coder", "small"],
        "resident": ["coder", "small"],
    }
    again.controller.alive.discard("b")  # a node the controller has not set: the host's start-time plan
    assert asyncio.run(again.claim_host("r3", ["a", "b"], None)) == {"node": "b"}
    assert service().host_claims() == {"a": "r1", "b": "r3"}
