"""A placement: the replicas of experts on nodes, and the memory a node's replicas hold.

A node holds its resident replicas plus room for the largest non-resident one, through which the
engine's tiered pool swaps the others (``memory_used``). Plain data; this module knows nothing about
how a placement is chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coserve.distributed.cluster import Footprint, NodeSpec

__all__ = ["Placement", "Replica", "memory_used"]


@dataclass(frozen=True)
class Replica:
    """One expert hosted on one node."""

    expert: str
    node: str
    resident: bool  # kept loaded; False: loaded on demand into the node's swap room
    share: float  # fraction of all requests it is expected to serve


@dataclass(frozen=True)
class Placement:
    """A plan: the replicas on each node, with what it was planned from."""

    replicas: tuple[Replica, ...]  # sorted by node, then expert
    nodes: tuple[NodeSpec, ...]  # the nodes it was planned over
    footprints: Mapping[str, Footprint] = field(repr=False)  # of every placed expert
    traffic: Mapping[str, float]  # normalised expected shares it was planned for
    required: frozenset[str]  # experts that must keep a replica
    busiest_load: float  # the largest node's share of all requests
    cold_share: float  # share of requests served by non-resident replicas (cold-load upper bound)
    moves: int = 0  # replicas started relative to the placement it re-planned (0 for a first plan)
    gap: float = 0.0  # relative MIP gap HiGHS reported (<= MIP_GAP when it finished)
    optimal: bool = True  # False: the time limit stopped HiGHS first (the plan is valid, maybe not best)

    def on(self, node: str) -> tuple[Replica, ...]:
        """The replicas hosted on ``node``."""
        return tuple(r for r in self.replicas if r.node == node)

    def replicas_of(self, expert: str) -> tuple[Replica, ...]:
        """The replicas of ``expert``."""
        return tuple(r for r in self.replicas if r.expert == expert)

    def load(self, node: str) -> float:
        """``node``'s expected share of all requests."""
        return sum(r.share for r in self.on(node))

    def used(self, node: str) -> tuple[int, int]:
        """Bytes of host and accelerator memory ``node``'s replicas hold at most."""
        return memory_used(((r.expert, r.resident) for r in self.on(node)), self.footprints)


def memory_used(hosted: Iterable[tuple[str, bool]], footprints: Mapping[str, Footprint]) -> tuple[int, int]:
    """(host, accelerator) bytes of experts ``(name, resident)`` on one node: the resident ones plus
    room for the largest non-resident one (the pool swaps them through that room)."""
    ram = accelerator = swap_ram = swap_accelerator = 0
    for expert, resident in hosted:
        size = footprints[expert]
        if resident:
            ram += size.ram_bytes
            accelerator += size.accelerator_bytes
        else:
            swap_ram = max(swap_ram, size.ram_bytes)
            swap_accelerator = max(swap_accelerator, size.accelerator_bytes)
    return ram + swap_ram, accelerator + swap_accelerator
