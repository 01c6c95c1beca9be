#!/usr/bin/env python3
"""How long the placement planner takes as the library and the cluster grow.

    .venv/bin/python scripts/plan_scale.py [--repeats 3] [--time-limit 20] [--json docs/data/plan-scale.json]

Solves seeded synthetic instances of 10 experts on 3 nodes, 100 on 30 and 1,000 on 100: nodes of
64 GiB host memory and speeds 1, 1.5 and 2 in turn, expert footprints drawn from 1-8 GiB, seconds
of work per request proportional to the footprint times 0.5-2, traffic shares Zipf-distributed (the
expert of rank k gets a share proportional to 1/k). Each size is solved ``--repeats`` times (sizes
alternating) and the median wall time of ``plan`` (building the program + HiGHS) is reported, with
the program's size, the busiest node's compute load, the cold-load bound, whether HiGHS proved its
gap (1e-3) or stopped at ``--time-limit`` seconds (then its gap is reported). Above
1,000 expert-node pairs each expert may only use its candidate nodes (coserve.distributed.candidates).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coserve.bench.provenance import write_data  # noqa: E402
from coserve.cli.common import at_least  # noqa: E402
from coserve.distributed.candidates import EXACT_PAIRS  # noqa: E402
from coserve.distributed.cluster import Cluster, Footprint  # noqa: E402
from coserve.distributed.planner import MIP_GAP, plan  # noqa: E402

GiB = 2**30
SIZES = ((10, 3), (100, 30), (1000, 100))  # (experts, nodes)
SPEEDS = (1.0, 1.5, 2.0)  # node speeds, in turn


def instance(
    experts: int, nodes: int, time_limit: float, seed: int = 0
) -> tuple[Cluster, dict[str, Footprint], dict[str, float]]:
    """A seeded cluster (node speeds 1, 1.5, 2 in turn), footprints, Zipf traffic, and seconds per
    request proportional to each footprint times a factor of 0.5-2 (experts differ in work)."""
    rng = random.Random(seed)
    cluster = Cluster.model_validate(
        {
            "nodes": [{"name": f"node-{j}", "ram": 64 * GiB, "speed": SPEEDS[j % 3]} for j in range(nodes)],
            "planner": {"time_limit_s": time_limit},
        }
    )
    sizes = {f"expert-{i}": int(rng.uniform(1, 8) * GiB) for i in range(experts)}
    order = list(sizes)
    rng.shuffle(order)
    traffic = {name: 1.0 / (rank + 1) for rank, name in enumerate(order)}
    work = random.Random(seed + 1)
    footprints = {e: Footprint(b, 0, b / GiB * work.uniform(0.5, 2.0)) for e, b in sizes.items()}
    return cluster, footprints, traffic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument(
        "--note",
        default="machine state not stated",
        help="the machine's state, e.g. 'quiet machine, nothing else running'",
    )
    parser.add_argument("--time-limit", type=float, default=20.0, help="HiGHS seconds per solve")
    parser.add_argument("--json", default=str(ROOT / "docs" / "data" / "plan-scale.json"))
    args = parser.parse_args()
    if not args.time_limit > 0:  # a pydantic traceback at the first instance
        parser.error(f"argument --time-limit: {args.time_limit:g} is not a number of seconds above 0")
    runs: dict[tuple[int, int], list[dict[str, float | bool | int]]] = {size: [] for size in SIZES}
    for _ in range(args.repeats):
        for experts, nodes in SIZES:
            cluster, footprints, traffic = instance(experts, nodes, args.time_limit)
            start = time.perf_counter()
            placement = plan(cluster, footprints, traffic)
            seconds = time.perf_counter() - start
            runs[(experts, nodes)].append(
                {
                    "seconds": seconds,
                    "optimal": placement.optimal,
                    "gap": placement.gap,
                    "busiest_load": placement.busiest_load,
                    "cold_share": placement.cold_share,
                    "replicas": len(placement.replicas),
                }
            )
            print(f"{experts:>5} experts {nodes:>4} nodes: {seconds:7.2f} s, optimal={placement.optimal}", flush=True)
    rows = []
    for (experts, nodes), samples in runs.items():
        last = samples[-1]
        cold, weight = float(last["cold_share"]), 1.0  # the default cold_load_weight
        rows.append(
            {
                "experts": experts,
                "nodes": nodes,
                "pairs": experts * nodes,  # every expert fits every node here
                "all_pairs_in_program": experts * nodes <= EXACT_PAIRS,
                "median_s": round(statistics.median(float(s["seconds"]) for s in samples), 3),
                "runs_s": [round(float(s["seconds"]), 3) for s in samples],
                "optimal": all(bool(s["optimal"]) for s in samples),
                "gap": max(float(s["gap"]) for s in samples),
                "busiest_load": round(float(last["busiest_load"]), 6),
                "ideal_load": round(1 / nodes, 6),
                # the objective is at least the even split 1/nodes: a gap HiGHS's own bound may not show
                "gap_to_even_split": round(1 - (1 / nodes) / (float(last["busiest_load"]) + weight * cold), 6),
                "cold_share": round(float(last["cold_share"]), 6),
                "replicas": last["replicas"],
            }
        )
    payload = {
        "what": "planner wall time (build + HiGHS) per instance size; median of the runs",
        "time_limit_s": args.time_limit,
        "mip_rel_gap": MIP_GAP,
        "note": f"{args.note}. busiest_load is the busiest "
        "node's compute load (node speeds 1/1.5/2, experts' seconds per request differ); 1/nodes stays a "
        "lower bound of it",
        "sizes": rows,
    }
    write_data(Path(args.json), payload, [".venv/bin/python", "scripts/plan_scale.py", *sys.argv[1:]])
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
