"""The placement planner: which experts go on which nodes, how many replicas each, and which stay
loaded — a mixed-integer program solved with HiGHS (``scipy.optimize.milp``), like the map.

Inputs (all plain numbers, so the planner is pure): the nodes with their host memory ``R_n`` and
accelerator memory ``A_n`` (bytes); each expert's footprint ``r_e`` / ``a_e`` (bytes one loaded
replica holds, as ``Backend.footprint`` measures it); the expected traffic share ``t_e`` of each
expert (fraction of all requests, summing to 1: the map times the category priors, or live counts);
the experts that must stay reachable (every expert the map uses); each expert's seconds of work per
request ``w_e`` on a speed-1.0 node (``Footprint.seconds_per_request``) and each node's relative speed
``s_n`` (``NodeSpec.speed``); optionally the current placement. From these, serving a share ``f`` of
requests of e on n costs n a compute load of ``k[e,n] f`` with ``k[e,n] = (w_e / W) (S / s_n)``, W the
mean work of a request (``sum_e t_e w_e``) and S the mean node speed (``placement.load_factors``):
k = 1 when costs and speeds are equal, and a load of 1/nodes on every node is a perfect balance.

Variables, for every expert e and node n that e fits on alone (``r_e <= R_n`` and ``a_e <= A_n``):

    x[e,n] in {0,1}   a replica of e is hosted on n (its file is there, the node's engine serves it)
    z[e,n] in {0,1}   that replica is kept loaded (resident); z <= x
    f[e,n] >= 0       share of all requests it serves
    c[e,n] >= 0       share of all requests it serves while not resident (each may need a cold load)
    sR[n], sA[n] >= 0 the node's swap room: memory for the largest hosted expert that is not resident
    L >= 0            the busiest node's compute load (its share of requests when k = 1)

Constraints:

    sum_n f[e,n] = t_e                      every expert's traffic is served
    f[e,n] <= t_e x[e,n]                    only by nodes that host it
    c[e,n] >= f[e,n] - t_e z[e,n]           traffic to a non-resident replica counts as cold
    sum_n x[e,n] >= 1                       every required expert keeps at least one replica
    sR[n] >= r_e (x[e,n] - z[e,n])          the swap room fits every swapped expert (same for sA, a_e)
    sum_e r_e z[e,n] + sR[n] <= R_n         memory is never exceeded (same for accelerator, A_n)
    sum_e k[e,n] f[e,n] <= L                L bounds every node's compute load

Objective (units: shares of all requests, of the cluster's compute for L), minimised:

    L + cold_load_weight * sum c + move_weight * (replicas started that the current placement lacks)
      + 1e-6 * (replicas) + 1e-7 * (replicas not resident)

The last two terms only break ties (no superfluous replica; keep loaded what fits). A node's memory
therefore holds its resident experts plus room to swap in one more: the engine's tiered pool does
the swapping, and ``c`` is an upper bound on the share of requests that meet a cold load (batching
serves several per load).

Solving: HiGHS stops within a relative gap of 1e-3 (``program.MIP_GAP``; optionally at the cluster
file's ``time_limit_s``, and the gap is reported), so two exact passes settle what the tie-breaks
would: a replica that serves nothing is dropped when its expert has another, and a swapped replica
is made resident, busiest first, wherever its node's memory still allows. The solution is checked
in exact bytes and re-solved with a tightened budget if HiGHS used its feasibility slack. Above
1,000 expert-node pairs each expert may only go to its candidate nodes (``candidates``: those of a
greedy placement, of the current placement, and the three least loaded others), and the better of
the greedy placement and HiGHS's is kept.

With the cluster file's ``planner.everywhere`` nothing is solved: every needed expert is resident on
every node, each node serving its speed's part of every expert's traffic (a ConfigError names a
node that cannot hold them all) — for memory to spare, and the benchmark's ceiling.

This module knows nothing about Ray, the engine, the router or files: callers measure footprints and
traffic and pass them in.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from coserve.distributed.cluster import Cluster, Footprint, NodeSpec
from coserve.distributed.placement import Placement, Replica, load_factors, memory_used
from coserve.distributed.program import MIP_GAP
from coserve.errors import ConfigError

__all__ = ["MIP_GAP", "Placement", "Replica", "memory_used", "plan"]


def _shares(traffic: Mapping[str, float], footprints: Mapping[str, Footprint]) -> dict[str, float]:
    """Traffic normalised to shares summing to 1 (all zero stays zero); bad values are ConfigErrors."""
    for expert, value in traffic.items():
        if expert not in footprints:
            raise ConfigError(f"traffic.{expert}: no footprint for this expert", param=f"traffic.{expert}")
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"traffic.{expert}: must be a finite number >= 0, got {value!r}")
    total = sum(traffic.values())
    return {e: (v / total if total > 0 else 0.0) for e, v in traffic.items()}


def _readable(size: int) -> str:
    """Bytes as GiB from 1 GiB up, else MiB: a 20 MiB node must not read as "0.00 GiB"."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _check_inputs(cluster: Cluster, footprints: Mapping[str, Footprint], needed: Collection[str]) -> None:
    if not cluster.nodes:
        raise ConfigError("the cluster has no nodes")
    for expert, size in footprints.items():
        if size.ram_bytes < 0 or size.accelerator_bytes < 0:
            raise ConfigError(f"expert {expert!r}: a footprint cannot be negative ({size})")
    for expert in needed:
        if expert not in footprints:
            raise ConfigError(f"expert {expert!r}: no footprint given for it")
        size = footprints[expert]
        if not any(_fits(size, node) for node in cluster.nodes):
            raise ConfigError(
                f"expert {expert!r} needs {_readable(size.ram_bytes)} of host memory and "
                f"{_readable(size.accelerator_bytes)} of accelerator memory; no node has that much "
                f"(largest: {_readable(max(n.ram for n in cluster.nodes))} host, "
                f"{_readable(max(n.accelerator for n in cluster.nodes))} accelerator)"
            )


def _fits(size: Footprint, node: NodeSpec) -> bool:
    return size.ram_bytes <= node.ram and size.accelerator_bytes <= node.accelerator


def plan(
    cluster: Cluster,
    footprints: Mapping[str, Footprint],
    traffic: Mapping[str, float],
    required: Collection[str] = (),
    *,
    current: Placement | None = None,
) -> Placement:
    """The placement minimising the busiest node's compute load and the expected cold loads (MILP, HiGHS)."""
    from coserve.distributed.candidates import EXACT_PAIRS, candidate_pairs, greedy
    from coserve.distributed.program import solve

    shares = _shares(traffic, footprints)
    needed = sorted(set(required) | {e for e, t in shares.items() if t > 0})
    _check_inputs(cluster, footprints, needed)
    nodes = list(cluster.nodes)
    factors = load_factors(nodes, {e: footprints[e] for e in needed}, shares)
    hosted_now = {(r.expert, r.node) for r in current.replicas} if current is not None else set()
    if cluster.planner.everywhere:
        replicas = _everywhere(nodes, footprints, shares, needed)
        return _placement(cluster, replicas, footprints, shares, needed, frozenset(required), hosted_now, 0.0, True)
    pairs = [(e, n) for e in needed for n in nodes if _fits(footprints[e], n)]
    start = greedy(nodes, footprints, shares, needed, factors) if len(pairs) > EXACT_PAIRS else None
    if start is not None:  # a large program: each expert only on its candidate nodes
        allowed = candidate_pairs(nodes, footprints, needed, start, hosted_now, factors)
        pairs = [(e, n) for e, n in pairs if (e, n.name) in allowed]

    def placement(replicas: list[Replica], gap: float = 0.0, optimal: bool = True) -> Placement:
        return _placement(cluster, replicas, footprints, shares, needed, frozenset(required), hosted_now, gap, optimal)

    budgets = {n.name: (n.ram, n.accelerator) for n in nodes}
    for _ in range(5):  # HiGHS allows a 1e-7 feasibility slack: tighten the node that used it, re-solve
        chosen, gap, optimal = solve(
            cluster.planner, pairs, nodes, budgets, footprints, shares, needed, hosted_now, factors
        )
        best = placement(_settle(chosen, budgets, footprints), gap, optimal)
        over = [n for n in nodes if not _within(best.used(n.name), (n.ram, n.accelerator))]
        if not over:
            if start is not None:
                fallback = placement(_settle([Replica(*r) for r in start], budgets, footprints), gap, optimal)
                best = min((best, fallback), key=lambda p: _score(p, cluster))
            return best
        for node in over:
            ram, accelerator = best.used(node.name)
            budget_ram, budget_accelerator = budgets[node.name]
            budgets[node.name] = (
                budget_ram - max(0, ram - node.ram) - 1,
                budget_accelerator - max(0, accelerator - node.accelerator) - 1,
            )
    raise ConfigError("the planner could not find a placement within every node's memory")  # not seen


def _everywhere(
    nodes: list[NodeSpec], footprints: Mapping[str, Footprint], shares: Mapping[str, float], needed: list[str]
) -> list[Replica]:
    """Every needed expert resident on every node, each node serving its speed's part of every expert's traffic."""
    used = memory_used([(e, True) for e in needed], footprints)
    for node in nodes:
        if not _within(used, (node.ram, node.accelerator)):
            raise ConfigError(
                f"planner.everywhere: node {node.name!r} cannot hold every expert resident "
                f"({_readable(used[0])} host, {_readable(used[1])} accelerator needed; "
                f"it has {_readable(node.ram)}, {_readable(node.accelerator)})"
            )
    speed = sum(n.speed for n in nodes)
    return [Replica(e, n.name, True, shares.get(e, 0.0) * n.speed / speed) for n in nodes for e in needed]


def _score(placement: Placement, cluster: Cluster) -> float:
    """The objective without its tie-breaks."""
    weights = cluster.planner
    return (
        placement.busiest_load + weights.cold_load_weight * placement.cold_share + weights.move_weight * placement.moves
    )


def _placement(
    cluster: Cluster,
    replicas: list[Replica],
    footprints: Mapping[str, Footprint],
    shares: Mapping[str, float],
    needed: list[str],
    required: frozenset[str],
    hosted_now: set[tuple[str, str]],
    gap: float,
    optimal: bool,
) -> Placement:
    order = {n.name: j for j, n in enumerate(cluster.nodes)}
    replicas = sorted(replicas, key=lambda r: (order[r.node], r.expert))
    factors = load_factors(cluster.nodes, {e: footprints[e] for e in needed}, shares)
    loads = [sum(r.share * factors[(r.expert, r.node)] for r in replicas if r.node == n.name) for n in cluster.nodes]
    return Placement(
        replicas=tuple(replicas),
        nodes=tuple(cluster.nodes),
        footprints={e: footprints[e] for e in needed},
        traffic=dict(shares),
        required=required,
        busiest_load=max(loads),
        cold_share=sum(r.share for r in replicas if not r.resident),
        moves=sum(1 for r in replicas if (r.expert, r.node) not in hosted_now) if hosted_now else 0,
        gap=gap,
        optimal=optimal,
    )


def _within(used: tuple[int, int], budget: tuple[int, int]) -> bool:
    return used[0] <= budget[0] and used[1] <= budget[1]


def _settle(
    replicas: list[Replica],
    budgets: Mapping[str, tuple[int, int]],
    footprints: Mapping[str, Footprint],
) -> list[Replica]:
    """Drop replicas that serve nothing where their expert has another; pin swapped ones that fit."""
    kept = list(replicas)
    for replica in sorted(replicas, key=lambda r: (r.share, r.expert, r.node)):
        if replica.share <= 0 and sum(1 for r in kept if r.expert == replica.expert) > 1:
            kept.remove(replica)
    for replica in sorted(kept, key=lambda r: (-r.share, r.expert, r.node)):
        if replica.resident:
            continue
        pinned = Replica(replica.expert, replica.node, True, replica.share)
        trial = [pinned if r is replica else r for r in kept]
        hosted = [(r.expert, r.resident) for r in trial if r.node == replica.node]
        if _within(memory_used(hosted, footprints), budgets[replica.node]):
            kept = trial
    return kept
