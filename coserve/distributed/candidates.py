"""A greedy placement, and from it the candidate nodes of each expert for a large planning program.

Above ``EXACT_PAIRS`` expert-node pairs the full program is too large for HiGHS to close in
seconds (100 experts on 30 identical nodes: a 95% gap after 20 s in one trial run), mostly
because identical nodes make many equal solutions to branch over. So each expert's replicas may go only to its candidate
nodes: those of the greedy placement below, those of the current placement, and ``EXTRA`` more
that the greedy placement left least loaded. The greedy placement also bounds the answer: the
planner keeps whichever of it and HiGHS's solution scores better.

Greedy: experts by falling compute (traffic times work per request); expert e gets
``ceil(t_e k_e * N)`` replicas (k_e its mean load factor over the nodes: its share spread so that no
replica carries more than an even node's compute), each on the node whose compute load is least with it
that can keep it resident, else that can swap it in, never exceeding memory. Pure; knows nothing about HiGHS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from coserve.distributed.cluster import Footprint, NodeSpec
from coserve.distributed.placement import memory_used

__all__ = ["EXACT_PAIRS", "EXTRA", "candidate_pairs", "greedy"]

EXACT_PAIRS = 1000  # up to this many expert-node pairs the program keeps them all (exact)
EXTRA = 3  # candidate nodes per expert beyond its greedy and current ones


def _room(hosted: list[tuple[str, bool]], footprints: Mapping[str, Footprint], node: NodeSpec) -> bool:
    ram, accelerator = memory_used(hosted, footprints)
    return ram <= node.ram and accelerator <= node.accelerator


def _factor(factors: Mapping[tuple[str, str], float] | None) -> Callable[[str, str], float]:
    table = factors or {}
    return lambda expert, node: table.get((expert, node), 1.0)


def greedy(
    nodes: list[NodeSpec],
    footprints: Mapping[str, Footprint],
    shares: Mapping[str, float],
    needed: list[str],
    factors: Mapping[tuple[str, str], float] | None = None,
) -> list[tuple[str, str, bool, float]] | None:
    """(expert, node, resident, share) of a greedy placement, or None when it cannot place everyone.
    ``factors``: (expert, node) -> compute per unit of share (``placement.load_factors``; absent: 1)."""
    factor = _factor(factors)
    load = {n.name: 0.0 for n in nodes}
    hosted: dict[str, list[tuple[str, bool]]] = {n.name: [] for n in nodes}
    out: list[tuple[str, str, bool, float]] = []

    def compute(expert: str) -> float:  # the expert's compute on an average node
        return shares.get(expert, 0.0) * sum(factor(expert, n.name) for n in nodes) / len(nodes)

    for expert in sorted(needed, key=lambda e: (-compute(e), e)):
        share = shares.get(expert, 0.0)
        wanted = max(1, math.ceil(compute(expert) * len(nodes) - 1e-9))
        chosen: list[tuple[str, bool]] = []
        for _ in range(wanted):
            free = [n for n in nodes if n.name not in {c for c, _ in chosen}]
            for resident in (True, False):
                fitting = [n for n in free if _room(hosted[n.name] + [(expert, resident)], footprints, n)]
                if fitting:
                    # the node whose compute load stays lowest with this replica on it
                    node = min(fitting, key=lambda n: (load[n.name] + share / wanted * factor(expert, n.name), n.name))
                    chosen.append((node.name, resident))
                    hosted[node.name].append((expert, resident))
                    break
            else:
                break
            load[chosen[-1][0]] += share / wanted * factor(expert, chosen[-1][0])
        if not chosen:
            return None
        for node_name, resident in chosen:  # fewer replicas than wanted: spread the share over them
            load[node_name] += (share / len(chosen) - share / wanted) * factor(expert, node_name)
            out.append((expert, node_name, resident, share / len(chosen)))
    return out


def candidate_pairs(
    nodes: list[NodeSpec],
    footprints: Mapping[str, Footprint],
    needed: list[str],
    start: list[tuple[str, str, bool, float]],
    hosted_now: set[tuple[str, str]],
    factors: Mapping[tuple[str, str], float] | None = None,
) -> set[tuple[str, str]]:
    """(expert, node name) pairs the program may use: greedy's, current ones, and EXTRA least loaded."""
    factor = _factor(factors)
    load = {n.name: 0.0 for n in nodes}
    for expert, node, _, share in start:
        load[node] += share * factor(expert, node)
    allowed = {(e, n) for e, n, _, _ in start} | hosted_now
    by_load = sorted(nodes, key=lambda n: (load[n.name], n.name))
    for expert in needed:
        size = footprints[expert]
        extra = [
            n.name
            for n in by_load
            if (expert, n.name) not in allowed and size.ram_bytes <= n.ram and size.accelerator_bytes <= n.accelerator
        ]
        allowed |= {(expert, n) for n in extra[:EXTRA]}
    return allowed
