"""The replica of the ``expert-host`` deployment: an ExpertHost that finds out at start which
cluster-file node it serves, and reports itself to Ray Serve's request router.

All replicas of the deployment get the same arguments (the cluster file's nodes and the start-time
placement); Ray puts each on a Ray node with a free unit of the ``coserve-host`` resource. A replica
reads the ``coserve-node-<name>`` resources of the Ray node it landed on: one resource, that node;
several (every cluster-file node started on one machine, as ``coserve serve --ray`` does without
an address), the one at its local rank among this deployment's replicas on that Ray node (Ray
Serve numbers them 0, 1, ... per node). It then takes that node's memory budget and experts.

It tells the router which node it serves through Ray Serve's ``record_replica_metadata`` hook (read
once, when the replica is ready) and reports its node, the tier of each expert placed on it and
its calls in flight through ``record_routing_stats`` (polled every ``request_routing_stats_period_s``).

Imports Ray only inside the replica (coserve.distributed.ray_app makes the class a deployment).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from coserve.distributed.cluster import Cluster
from coserve.distributed.ray_host import ExpertHost
from coserve.distributed.ray_placement import NODE_PREFIX
from coserve.errors import ConfigError

__all__ = ["HOST_RESOURCE", "NodeHost", "node_for"]

log = logging.getLogger("coserve.distributed")

HOST_RESOURCE = "coserve-host"  # one unit per cluster-file node a Ray node carries; each host replica takes one


def node_for(resources: Mapping[str, float], local_rank: int) -> str:
    """The cluster-file node of a replica with this local rank on a Ray node with these resources."""
    names = sorted(r[len(NODE_PREFIX) :] for r, amount in resources.items() if r.startswith(NODE_PREFIX) and amount > 0)
    if not names:
        raise ConfigError(f"this Ray node carries no {NODE_PREFIX}<name> resource, but it has a {HOST_RESOURCE} one")
    if local_rank >= len(names):
        raise ConfigError(f"expert-host replica {local_rank} on a Ray node that carries only {', '.join(names)}")
    return names[local_rank]


def _this_node() -> str:
    import ray
    from ray import serve

    node_id = ray.get_runtime_context().get_node_id()
    (resources,) = [n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node_id]
    return node_for(resources, serve.get_replica_context().rank.local_rank)


class NodeHost(ExpertHost):
    """An expert host that serves the cluster-file node it runs on (see the module doc)."""

    def __init__(
        self,
        library_path: str | None,
        cluster: Cluster,
        placed: Mapping[str, Sequence[str]],
        resident: Mapping[str, Sequence[str]],
    ):
        node = _this_node()
        (spec,) = [n for n in cluster.nodes if n.name == node]
        log.info("expert host for node %s: %s", node, ", ".join(placed.get(node, ())) or "no experts yet")
        super().__init__(library_path, node, placed.get(node, ()), spec.ram, spec.accelerator, resident.get(node, ()))

    def record_replica_metadata(self) -> dict[str, Any]:
        """Ray Serve's hook, read once: the node this replica serves."""
        return {"node": self.node}

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve's hook, polled: the node, its experts' tiers and its calls in flight."""
        return {**self._state(), "in_flight": sum(self.running.values())}
