"""The placement planner's mixed-integer program (stated in coserve.distributed.planner), built as
sparse rows and solved with HiGHS through ``scipy.optimize.milp``.

Memory rows are divided by the node's budget so every coefficient is a fraction of a node; the
objective is multiplied by SCALE so HiGHS's absolute gap is far below any share that matters. This
module knows nothing about greedy starts, re-planning or files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from coserve.distributed.cluster import Footprint, NodeSpec, PlannerSettings
from coserve.distributed.placement import Replica
from coserve.errors import ConfigError

__all__ = ["MIP_GAP", "solve"]

SCALE = 1e3  # objective multiplier: HiGHS's absolute gap (1e-6) becomes 1e-9 of a request share
MIP_GAP = 1e-3  # relative gap HiGHS stops at (0.1% of the objective); closer costs minutes
REPLICA_EPS = 1e-6  # tie-break per replica hosted
SWAP_EPS = 1e-7  # tie-break per replica hosted but not resident
SHARE_NOISE = 1e-9  # a replica's share below this is read as zero


def solve(
    settings: PlannerSettings,
    pairs: list[tuple[str, NodeSpec]],
    nodes: list[NodeSpec],
    budgets: Mapping[str, tuple[int, int]],
    footprints: Mapping[str, Footprint],
    shares: Mapping[str, float],
    needed: list[str],
    hosted_now: set[tuple[str, str]],
    factors: Mapping[tuple[str, str], float],
) -> tuple[list[Replica], float, bool]:
    """(replicas, relative gap, proven within MIP_GAP) of the program over ``pairs``."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

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
        # L bounds the node's compute load: the share each replica serves times its load factor
        row([(F + p, factors[(pairs[p][0], n.name)]) for p in by_node[j]] + [(L, -1.0)], -np.inf, 0.0)
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
            share = float(solution[F + p]) if shares.get(e, 0.0) > 0 else 0.0
            share = share if share > SHARE_NOISE else 0.0  # HiGHS's tolerances leave ~1e-12 crumbs
            replicas.append(Replica(e, n.name, bool(solution[Z + p] > 0.5), share))
    return replicas, float(getattr(result, "mip_gap", 0.0) or 0.0), result.status == 0
