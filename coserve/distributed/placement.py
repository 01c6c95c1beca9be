"""A placement: the replicas of experts on nodes, the memory a node's replicas hold, and the
compute each node is expected to spend.

A node holds its resident replicas plus room for the largest non-resident one, through which the
engine's tiered pool swaps the others (``memory_used``). A node's compute load (``load_factors``)
is its expected seconds of work per request to the cluster, ``sum_e f[e,n] w_e / speed_n``, divided
by what an average-speed node would spend on an average request, ``sum_e t_e w_e / mean speed``: so
with equal costs and speeds it is the node's share of requests, and 1/nodes on every node is a
perfect balance whatever the costs and speeds. Plain data; this module knows nothing about how a
placement is chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coserve.distributed.cluster import Footprint, NodeSpec

__all__ = ["Placement", "Replica", "expert_costs", "load_factors", "memory_used"]


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
    busiest_load: float  # the largest node's compute load (its share of requests when costs are equal)
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

    def compute_load(self, node: str) -> float:
        """``node``'s expected compute load (see the module doc; its request share when costs are equal)."""
        factors = load_factors(self.nodes, self.footprints, self.traffic)
        return sum(r.share * factors[(r.expert, r.node)] for r in self.on(node))

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


def expert_costs(footprints: Mapping[str, Footprint], traffic: Mapping[str, float]) -> dict[str, float]:
    """Seconds per request of every expert: its own where known, else the traffic-weighted mean of the
    known ones (the plain mean when none of them has traffic), else 1.0 for all."""
    known = {e: f.seconds_per_request for e, f in footprints.items() if f.seconds_per_request is not None}
    if not known:
        return dict.fromkeys(footprints, 1.0)
    weight = sum(traffic.get(e, 0.0) for e in known)
    mean = (
        sum(traffic.get(e, 0.0) * w for e, w in known.items()) / weight
        if weight > 0
        else sum(known.values()) / len(known)
    )
    return {e: known.get(e, mean) for e in footprints}


def load_factors(
    nodes: Iterable[NodeSpec], footprints: Mapping[str, Footprint], traffic: Mapping[str, float]
) -> dict[tuple[str, str], float]:
    """(expert, node) -> compute load per unit of request share it serves there:
    ``(w_e / mean work per request) * (mean speed / speed_n)``; all 1.0 with equal costs and speeds."""
    nodes = list(nodes)
    costs = expert_costs(footprints, traffic)
    total = sum(traffic.get(e, 0.0) for e in costs)
    if len(set(costs.values())) <= 1:  # equal costs: exactly 1 (no rounding), as before costs existed
        work = dict.fromkeys(costs, 1.0)
    else:
        mean_work = (
            sum(traffic.get(e, 0.0) * w for e, w in costs.items()) / total
            if total > 0
            else sum(costs.values()) / len(costs)
        )
        work = {e: w / mean_work for e, w in costs.items()}
    speeds = {n.name: n.speed for n in nodes}
    mean_speed = sum(speeds.values()) / len(speeds) if speeds else 1.0
    if len(set(speeds.values())) <= 1:
        speeds = dict.fromkeys(speeds, mean_speed)  # equal speeds: a factor of exactly 1
    return {(e, n): w * (mean_speed / speed) for e, w in work.items() for n, speed in speeds.items()}
