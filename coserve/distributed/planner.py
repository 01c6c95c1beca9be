"""The placement planner: which experts go on which nodes, how many replicas each, and which stay
loaded — a mixed-integer program solved with HiGHS (``scipy.optimize.milp``), like the map.

Inputs (all plain numbers, so the planner is pure): the nodes with their host memory ``R_n`` and
accelerator memory ``A_n`` (bytes); each expert's footprint ``r_e`` / ``a_e`` (bytes one loaded
replica holds, as ``Backend.footprint`` measures it); the expected traffic share ``t_e`` of each
expert (fraction of all requests, summing to 1: the map times the category priors, or live counts);
the experts that must stay reachable (every expert the map uses); optionally the current placement.

Variables, for every expert e and node n that e fits on alone (``r_e <= R_n`` and ``a_e <= A_n``):

    x[e,n] in {0,1}   a replica of e is hosted on n (its file is there, the node's engine serves it)
    z[e,n] in {0,1}   that replica is kept loaded (resident); z <= x
    f[e,n] >= 0       share of all requests it serves
    c[e,n] >= 0       share of all requests it serves while not resident (each may need a cold load)
    sR[n], sA[n] >= 0 the node's swap room: memory for the largest hosted expert that is not resident
    L >= 0            the busiest node's share of all requests

Constraints:

    sum_n f[e,n] = t_e                      every expert's traffic is served
    f[e,n] <= t_e x[e,n]                    only by nodes that host it
    c[e,n] >= f[e,n] - t_e z[e,n]           traffic to a non-resident replica counts as cold
    sum_n x[e,n] >= 1                       every required expert keeps at least one replica
    sR[n] >= r_e (x[e,n] - z[e,n])          the swap room fits every swapped expert (same for sA, a_e)
    sum_e r_e z[e,n] + sR[n] <= R_n         memory is never exceeded (same for accelerator, A_n)
    sum_e f[e,n] <= L                       L bounds every node's load

Objective (units: shares of all requests), minimised:

    L + cold_load_weight * sum c + move_weight * (replicas started that the current placement lacks)
      + 1e-6 * (replicas) + 1e-7 * (replicas not resident)

The last two terms only break ties (no superfluous replica; keep loaded what fits). HiGHS stops
within a relative gap of 1e-4, so two passes settle what the tie-breaks would: a replica that serves
nothing is dropped when its expert has another, and a swapped replica is made resident, busiest
first, wherever its node's memory still allows. A node's
memory therefore holds its resident experts plus room to swap in one more: the engine's tiered pool
does the swapping, and ``c`` is an upper bound on the share of requests that meet a cold load
(batching serves several per load). Memory rows are scaled by the node's budget; the solution is
checked in exact integers and re-solved with a tightened budget if HiGHS used its feasibility slack.

This module knows nothing about Ray, the engine, the router or files: callers measure footprints and
traffic and pass them in.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from coserve.distributed.cluster import Cluster, Footprint, NodeSpec
from coserve.errors import ConfigError

__all__ = ["Placement", "Replica", "memory_used", "plan"]

SCALE = 1e3  # objective multiplier: HiGHS's absolute gap (1e-6) becomes 1e-9 of a request share
MIP_GAP = 1e-4  # relative gap HiGHS stops at; proving the tie-breaks below exactly costs minutes
REPLICA_EPS = 1e-6  # tie-break per replica hosted
SWAP_EPS = 1e-7  # tie-break per replica hosted but not resident


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


def _shares(traffic: Mapping[str, float], footprints: Mapping[str, Footprint]) -> dict[str, float]:
    """Traffic normalised to shares summing to 1 (all zero stays zero); bad values are ConfigErrors."""
    for expert, value in traffic.items():
        if expert not in footprints:
            raise ConfigError(f"traffic.{expert}: no footprint for this expert", param=f"traffic.{expert}")
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"traffic.{expert}: must be a finite number >= 0, got {value!r}")
    total = sum(traffic.values())
    return {e: (v / total if total > 0 else 0.0) for e, v in traffic.items()}


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
                f"expert {expert!r} needs {size.ram_bytes / 2**30:.2f} GiB of host memory and "
                f"{size.accelerator_bytes / 2**30:.2f} GiB of accelerator memory; no node has that much "
                f"(largest: {max(n.ram for n in cluster.nodes) / 2**30:.2f} GiB host, "
                f"{max(n.accelerator for n in cluster.nodes) / 2**30:.2f} GiB accelerator)"
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
    """The placement minimising the busiest node's load and the expected cold loads (MILP, HiGHS)."""
    shares = _shares(traffic, footprints)
    needed = sorted(set(required) | {e for e, t in shares.items() if t > 0})
    _check_inputs(cluster, footprints, needed)
    nodes = list(cluster.nodes)
    hosted_now = {(r.expert, r.node) for r in current.replicas} if current is not None else set()
    budgets = {n.name: (n.ram, n.accelerator) for n in nodes}
    for _ in range(5):  # HiGHS allows a 1e-7 feasibility slack: tighten the node that used it, re-solve
        placement = _solve(cluster, nodes, budgets, footprints, shares, needed, frozenset(required), hosted_now)
        over = [n for n in nodes if not _within(placement.used(n.name), (n.ram, n.accelerator))]
        if not over:
            return placement
        for node in over:
            ram, accelerator = placement.used(node.name)
            budget_ram, budget_accelerator = budgets[node.name]
            budgets[node.name] = (
                budget_ram - max(0, ram - node.ram) - 1,
                budget_accelerator - max(0, accelerator - node.accelerator) - 1,
            )
    raise ConfigError("the planner could not find a placement within every node's memory")  # not seen


def _within(used: tuple[int, int], budget: tuple[int, int]) -> bool:
    return used[0] <= budget[0] and used[1] <= budget[1]


def _solve(
    cluster: Cluster,
    nodes: list[NodeSpec],
    budgets: Mapping[str, tuple[int, int]],
    footprints: Mapping[str, Footprint],
    shares: Mapping[str, float],
    needed: list[str],
    required: frozenset[str],
    hosted_now: set[tuple[str, str]],
) -> Placement:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    settings = cluster.planner
    pairs = [(e, n) for e in needed for n in nodes if _fits(footprints[e], n)]
    P, N = len(pairs), len(nodes)
    node_index = {n.name: j for j, n in enumerate(nodes)}
    X, Z, F, C, SR, SA, L = 0, P, 2 * P, 3 * P, 4 * P, 4 * P + N, 4 * P + 2 * N
    size = 4 * P + 2 * N + 1
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    low: list[float] = []
    high: list[float] = []

    def row(entries: Iterable[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(low)
        for col, val in entries:
            if val != 0.0:
                rows.append(r)
                cols.append(col)
                vals.append(val)
        low.append(lo)
        high.append(hi)

    by_expert: dict[str, list[int]] = {e: [] for e in needed}
    by_node: list[list[int]] = [[] for _ in nodes]
    for p, (e, n) in enumerate(pairs):
        by_expert[e].append(p)
        by_node[node_index[n.name]].append(p)
    for e in needed:
        t = shares.get(e, 0.0)
        row(((F + p, 1.0) for p in by_expert[e]), t, t)  # every expert's traffic is served
        row(((X + p, 1.0) for p in by_expert[e]), 1.0, np.inf)  # at least one replica
    for p, (e, n) in enumerate(pairs):
        t = shares.get(e, 0.0)
        j = node_index[n.name]
        ram_scale, accelerator_scale = max(budgets[n.name][0], 1), max(budgets[n.name][1], 1)
        size_e = footprints[e]
        row(((F + p, 1.0), (X + p, -t)), -np.inf, 0.0)  # served only where hosted
        row(((Z + p, 1.0), (X + p, -1.0)), -np.inf, 0.0)  # resident only where hosted
        row(((F + p, 1.0), (Z + p, -t), (C + p, -1.0)), -np.inf, 0.0)  # cold traffic
        r, a = size_e.ram_bytes / ram_scale, size_e.accelerator_bytes / accelerator_scale
        row(((X + p, r), (Z + p, -r), (SR + j, -1.0)), -np.inf, 0.0)  # swap room fits it
        row(((X + p, a), (Z + p, -a), (SA + j, -1.0)), -np.inf, 0.0)
    for j, n in enumerate(nodes):
        ram_budget, accelerator_budget = budgets[n.name]
        ram_scale, accelerator_scale = max(ram_budget, 1), max(accelerator_budget, 1)
        row(
            [(Z + p, footprints[pairs[p][0]].ram_bytes / ram_scale) for p in by_node[j]] + [(SR + j, 1.0)],
            -np.inf,
            ram_budget / ram_scale,
        )
        row(
            [(Z + p, footprints[pairs[p][0]].accelerator_bytes / accelerator_scale) for p in by_node[j]]
            + [(SA + j, 1.0)],
            -np.inf,
            accelerator_budget / accelerator_scale,
        )
        row([(F + p, 1.0) for p in by_node[j]] + [(L, -1.0)], -np.inf, 0.0)  # L bounds the load
    objective = np.zeros(size)
    objective[L] = 1.0
    objective[C : C + P] = settings.cold_load_weight
    for p, (e, n) in enumerate(pairs):
        started = settings.move_weight if hosted_now and (e, n.name) not in hosted_now else 0.0
        objective[X + p] = started + REPLICA_EPS + SWAP_EPS
        objective[Z + p] = -SWAP_EPS
    upper = np.full(size, np.inf)
    upper[X : X + 2 * P] = 1.0
    integrality = np.zeros(size)
    integrality[X : X + 2 * P] = 1
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(low), size)).tocsr()
    options: dict[str, float] = {"mip_rel_gap": MIP_GAP}
    if settings.time_limit_s is not None:
        options["time_limit"] = settings.time_limit_s
    result = milp(
        SCALE * objective,
        integrality=integrality,
        bounds=Bounds(np.zeros(size), upper),
        constraints=[LinearConstraint(matrix, np.array(low), np.array(high))],
        options=options,
    )
    if result.x is None:
        raise ConfigError(f"the planner found no placement: {result.message}")
    solution = result.x
    replicas = []
    for p, (e, n) in enumerate(pairs):
        if solution[X + p] > 0.5:
            share = max(0.0, float(solution[F + p])) if shares.get(e, 0.0) > 0 else 0.0
            replicas.append(Replica(e, n.name, bool(solution[Z + p] > 0.5), share))
    replicas = _settle(replicas, nodes, budgets, footprints)
    replicas.sort(key=lambda r: (node_index[r.node], r.expert))
    loads = [sum(r.share for r in replicas if r.node == n.name) for n in nodes]
    return Placement(
        replicas=tuple(replicas),
        nodes=tuple(nodes),
        footprints={e: footprints[e] for e in needed},
        traffic=dict(shares),
        required=required,
        busiest_load=max(loads),
        cold_share=sum(r.share for r in replicas if not r.resident),
        moves=sum(1 for r in replicas if (r.expert, r.node) not in hosted_now) if hosted_now else 0,
        gap=float(getattr(result, "mip_gap", 0.0) or 0.0),
        optimal=result.status == 0,
    )


def _settle(
    replicas: list[Replica],
    nodes: list[NodeSpec],
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
