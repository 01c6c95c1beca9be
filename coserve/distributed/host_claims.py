"""Which expert-host replica serves which cluster-file node: the claims the placement controller holds.

A Ray node may carry several cluster-file nodes (every node of the cluster file started on one
machine, as ``coserve serve --ray`` without an address does); an expert-host replica that lands
there cannot tell from Ray alone which of them is its own, since Ray Serve renumbers its replicas'
ranks when some die. So each replica *claims* its node at start (coserve.distributed.ray_node_host),
naming itself (its actor name: unique for the replica's life) and the nodes its Ray node carries.
A claim is granted on a node no live replica holds: the node the replica holds already (a claim
asked again), else its first guess (the node at its local rank), else the first free one in name
order. A node's holder is asked about (``is_alive``) only when a claim wants that node: a dead
holder's node is free again, so a replacement replica takes the dead one's node, and no two live
replicas ever hold one node. No node free: None (the caller asks again once the replica it
replaces is gone).

Pure: knows nothing about Ray (``is_alive`` is the caller's) nor about the placement.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

__all__ = ["HostClaims"]


class HostClaims:
    """The node each expert-host replica holds (see the module doc)."""

    def __init__(self, holders: Mapping[str, str] | None = None):
        self.holders: dict[str, str] = dict(holders or {})  # node -> the replica holding it

    def claim(
        self, replica: str, candidates: Sequence[str], first_guess: str | None, is_alive: Callable[[str], bool]
    ) -> str | None:
        """The node granted to ``replica`` among ``candidates``, or None when a live replica holds each."""
        wanted = sorted(set(candidates))
        for node in wanted:
            if self.holders.get(node) == replica:
                return node
        order = ([first_guess] if first_guess in wanted else []) + [n for n in wanted if n != first_guess]
        for node in order:
            holder = self.holders.get(node)
            if holder is None or not is_alive(holder):
                self.holders[node] = replica
                return node
        return None

    def release(self, replica: str) -> list[str]:
        """Drop every claim of ``replica`` (it is gone); the nodes it held."""
        nodes = sorted(n for n, holder in self.holders.items() if holder == replica)
        for node in nodes:
            del self.holders[node]
        return nodes

    def to_bytes(self) -> bytes:
        return json.dumps(dict(sorted(self.holders.items()))).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> HostClaims:
        holders = json.loads(raw)
        if not isinstance(holders, dict) or not all(isinstance(v, str) for v in holders.values()):
            raise ValueError("host claims must be an object of node -> replica")
        return cls({str(k): v for k, v in holders.items()})
