"""The replica of the ``expert-host`` deployment: an ExpertHost that finds out at start which
cluster-file node it serves, and reports itself to Ray Serve's request router.

All replicas of the deployment get the same arguments (the cluster file's nodes and the start-time
placement); Ray puts each on a Ray node with a free unit of the ``coserve-host`` resource. A replica
reads the ``coserve-node-<name>`` resources of the Ray node it landed on (one on a real cluster;
several when every cluster-file node runs on one machine, as ``coserve serve --ray`` without an
address starts them) and claims one of them from the ``placement`` controller
(coserve.distributed.host_claims), naming itself by its actor name: the controller grants a node
no live replica holds, trying first the one at the replica's local rank (Ray Serve numbers them
0, 1, ... per Ray node, but renumbers after replicas die, so the rank is only a guess). While a
live replica holds every node, it asks again every ``CLAIM_RETRY_S`` (the replica it replaces is
still stopping), for at most ``CLAIM_TIMEOUT_S``. It then takes that node's memory budget and
experts: those of the placement in force, which the claim's answer carries (a replacement replica
after a re-plan), else the start-time placement's.

It tells the router which node it serves through Ray Serve's ``record_replica_metadata`` hook (read
once, when the replica is ready) and reports its node, the tier of each expert placed on it and
its calls in flight through ``record_routing_stats`` (polled every ``request_routing_stats_period_s``).

Imports Ray only inside the replica (coserve.distributed.ray_app makes the class a deployment).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from coserve.distributed.cluster import Cluster
from coserve.distributed.ray_host import ExpertHost
from coserve.distributed.ray_placement import NODE_PREFIX, PLACEMENT
from coserve.errors import ConfigError

__all__ = ["HOST_RESOURCE", "NodeHost", "first_guess", "nodes_carried", "nodes_in_file"]

log = logging.getLogger("coserve.distributed")

HOST_RESOURCE = "coserve-host"  # one unit per cluster-file node a Ray node carries; each host replica takes one
CLAIM_RETRY_S = 0.5  # seconds between two claims while every node is held by a live replica
CLAIM_TIMEOUT_S = 120.0  # the longest a replica waits for a node (then it fails and Ray Serve starts another)


def nodes_carried(resources: Mapping[str, float]) -> list[str]:
    """The cluster-file nodes a Ray node with these resources carries, in name order."""
    names = sorted(r[len(NODE_PREFIX) :] for r, amount in resources.items() if r.startswith(NODE_PREFIX) and amount > 0)
    if not names:
        raise ConfigError(f"this Ray node carries no {NODE_PREFIX}<name> resource, but it has a {HOST_RESOURCE} one")
    return names


def nodes_in_file(carried: Sequence[str], cluster: Cluster) -> list[str]:
    """The nodes a Ray node carries that the application's cluster file has (a replica claims one of
    them). None is a deployment for another cluster file (or none: one node, ``local``) than the Ray
    nodes were started for: an error that names both sides."""
    names = {n.name for n in cluster.nodes}
    kept = [n for n in carried if n in names]
    if not kept:
        raise ConfigError(
            f"this Ray node carries the resource of node(s) {', '.join(carried)}, which the application's cluster "
            f"file lacks (its nodes: {', '.join(sorted(names))}): deploy with the cluster file the Ray nodes were "
            f"started for (coserve deploy --ray-config OUT.yaml --cluster FILE)"
        )
    return kept


def first_guess(names: Sequence[str], local_rank: int) -> str | None:
    """The node a replica with this local rank asks for first (None past the end)."""
    return names[local_rank] if 0 <= local_rank < len(names) else None


async def claim_node(cluster: Cluster) -> dict[str, Any]:
    """The cluster-file node this replica serves, claimed from the placement controller, with its
    experts when the controller has them (``PlacementService.claim_host``)."""
    import ray
    from ray import serve

    context = serve.get_replica_context()
    node_id = ray.get_runtime_context().get_node_id()
    (resources,) = [n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node_id]
    names = nodes_in_file(nodes_carried(resources), cluster)
    guess = first_guess(names, context.rank.local_rank)
    replica = ray.get_runtime_context().get_actor_name() or context.replica_id.to_full_id_str()
    controller = serve.get_deployment_handle(PLACEMENT, app_name=context.app_name)
    deadline = time.monotonic() + CLAIM_TIMEOUT_S
    while True:
        claim: dict[str, Any] | None = await controller.claim_host.remote(replica, names, guess)
        if claim is not None:
            return claim
        if time.monotonic() > deadline:
            raise ConfigError(f"expert host {replica}: every node of {', '.join(names)} is held by a live replica")
        await asyncio.sleep(CLAIM_RETRY_S)


class NodeHost(ExpertHost):
    """An expert host that serves the cluster-file node it runs on (see the module doc)."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        library_path: str | None,
        cluster: Cluster,
        placed: Mapping[str, Sequence[str]],
        resident: Mapping[str, Sequence[str]],
    ):
        claim = await claim_node(cluster)
        node = str(claim["node"])
        experts = claim.get("experts", placed.get(node, ()))  # the placement in force, else the start-time one
        pinned = claim.get("resident", resident.get(node, ()))
        (spec,) = [n for n in cluster.nodes if n.name == node]
        log.info("expert host for node %s: %s", node, ", ".join(experts) or "no experts yet")
        super().__init__(library_path, node, experts, spec.ram, spec.accelerator, pinned)

    def record_replica_metadata(self) -> dict[str, Any]:
        """Ray Serve's hook, read once: the node this replica serves."""
        return {"node": self.node}

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve's hook, polled: the node, its experts' tiers and its calls in flight."""
        return {**self._state(), "in_flight": sum(self.running.values())}
