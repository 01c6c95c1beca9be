"""Ray Serve's request router for the ``expert-host`` deployment: the replica that answers each host call.

The expert hosts are ONE deployment with one replica per cluster-file node (coserve.distributed.
ray_app); each replica says which node it serves through Ray Serve's ``record_replica_metadata``
hook and reports the tiers of its experts and its calls in flight through ``record_routing_stats``
(coserve.distributed.ray_node_host). Every handle to the deployment (the ingresses', the placement
controller's) routes through ``ExpertRouter``, configured on the deployment with
``request_router_config``; it ranks the replicas with ``ray_choice.replica_ranks`` (pure): a
``stream(request, expert, nodes)`` call goes to a replica of ``nodes`` with the expert ACTIVE, else
in RAM, else the least loaded one, never to one the expert is not placed on; any other call names
its node first and goes to that node's replica. Ray Serve then asks the replicas of the best group
for their queue length and sends the call to the least busy one that accepts it (its own
``_select_from_candidate_replicas``), trying the next group when none does.

A replica that Ray reports unreachable is skipped for ``DOWN_FOR_S`` (Ray itself drops one whose
actor died). When no replica may take a call, the router keeps it queued with Ray's backoff until
the replicas change: callers bound their waits (the ingress probes the nodes it allowed). Since such
a call holds one of Ray's routing tasks while it waits, the router runs up to Ray's hard cap of
them (``max_num_routing_tasks``) rather than two per replica.

Imported by Ray Serve by its path (``ROUTER_CLASS``) in every process that holds a handle to the
hosts; needs Ray (``coserve[ray]``).
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from coserve.distributed.ray_choice import DOWN_FOR_S, ReplicaReport, replica_ranks

__all__ = ["ROUTER_CLASS", "ExpertRouter", "report_of"]

ROUTER_CLASS = "coserve.distributed.ray_router:ExpertRouter"


def report_of(replica: RunningReplica) -> ReplicaReport:
    """What the replica reported: its node (metadata, else its stats), its tiers and calls in flight."""
    stats: dict[str, Any] = replica.routing_stats or {}
    node = replica.replica_metadata.get("node") or stats.get("node")
    return ReplicaReport(
        node=str(node) if node else None,
        tiers=stats.get("tiers") or {},  # read, never copied: only the allowed nodes' tiers are looked at
        in_flight=int(stats.get("in_flight", 0)),
    )


class ExpertRouter(RequestRouter):
    """Chooses the expert-host replica for each call (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.down_until: dict[ReplicaID, float] = {}  # monotonic seconds

    @property
    def max_num_routing_tasks(self) -> int:
        """Ray Serve's hard cap on routing tasks, not twice the replicas as its default: a routing task
        stays with its call until a replica takes it, and a call here may wait for one node only
        (whose replica may be gone unnoticed); at 2 x replicas, a few such calls would hold every task
        and starve the calls for the other nodes (their callers cancel them after a probe)."""
        return int(self.max_num_routing_tasks_cap)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None:  # Ray asks without a request only to warm up: any replica
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # none fits now: wait, do not spin
        now = time.monotonic()
        by_id = {r.replica_id: r for r in candidate_replicas if self.down_until.get(r.replica_id, 0.0) <= now}
        ranks = replica_ranks(
            pending_request.metadata.call_method,
            pending_request.args,
            {replica_id: report_of(replica) for replica_id, replica in by_id.items()},
        )
        return [[by_id[replica_id] for replica_id in group] for group in ranks]

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: RequestMetadata | None = None
    ) -> None:
        """Give the replica to exactly the call it was chosen for. Ray Serve's own version matches
        the pending call by ``internal_request_id``, which every handle call made while serving one
        request inherits from it (so an ingress's stream and its probes of other nodes share one) and
        it indexes only the first pending call per id: a replica chosen for one call could go to its
        sibling. Here the call is found by its metadata object, which is its own."""
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._cancel_routing_task_for_pending_request(pending)
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                self._remove_pending_request_from_indices(pending)
                return

    def on_replica_actor_unavailable(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_unavailable(replica_id)
        self.down_until[replica_id] = time.monotonic() + DOWN_FOR_S

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.down_until.pop(replica_id, None)
