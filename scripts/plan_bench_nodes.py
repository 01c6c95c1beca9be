#!/usr/bin/env python3
"""Which placements the cluster benchmark's nodes allow, and which one the planner picks.

    .venv/bin/python scripts/plan_bench_nodes.py [--experts-data docs/data/bench-experts-5596d54.json]
        [--max-tokens 24] [--json docs/data/plan-bench-nodes.json]

Two nodes with the benchmark's budget (``coserve bench cluster``: the largest loaded footprint x 1.05,
rounded up to a MiB) and the default library (footprints from its files, traffic from its map and
priors). Every layout (per node and expert: absent, resident or swapped) that fits both nodes and
hosts every expert is listed once (the two nodes are alike), with the best split of each expert's
traffic over its replicas for the planner's objective, solved as a small LP, under two sources of
seconds per request:

* ``estimated``: the planner's default rule (128 tokens reading the weights at 20 GB/s);
* ``measured``: ``coserve bench experts``'s figures, ``ttft_warm_s + max_tokens / decode_tok_s``.

For each it reports what ``plan`` picks at the default ``cold_load_weight`` (1.0) and at the weight
read from the measured load times: a cold load costs ``ttft_cold_s - ttft_warm_s`` seconds, so one
request that meets one costs the traffic-weighted mean of those over the mean request's seconds; and
the weight below which the best-balanced layout would beat the planner's. Pure computation, seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coserve.bench.cluster_report import node_budget  # noqa: E402
from coserve.bench.provenance import write_data  # noqa: E402
from coserve.bench.script_run import run_script  # noqa: E402
from coserve.cli.common import at_least  # noqa: E402
from coserve.distributed.cluster import Cluster, Footprint  # noqa: E402
from coserve.distributed.inputs import plan_inputs  # noqa: E402
from coserve.distributed.placement import load_factors, memory_used  # noqa: E402
from coserve.distributed.planner import plan  # noqa: E402

NODES = ("node-1", "node-2")


def best_split(
    layout: tuple[dict[str, bool], dict[str, bool]],
    factors: dict[tuple[str, str], float],
    traffic: dict[str, float],
    weight: float,
) -> tuple[float, float, dict[str, dict[str, float]]]:
    """(busiest compute load, swapped share, shares) of the split minimising L + weight * swapped."""
    from scipy.optimize import linprog

    pairs = [(e, NODES[j], resident) for j, hosted in enumerate(layout) for e, resident in hosted.items()]
    cost = [weight * (0.0 if resident else 1.0) for _, _, resident in pairs] + [1.0]
    eq = [[1.0 if p[0] == e else 0.0 for p in pairs] + [0.0] for e in traffic]
    upper = [[factors[(e, n)] if n == node else 0.0 for e, n, _ in pairs] + [-1.0] for node in NODES]
    result = linprog(cost, A_ub=upper, b_ub=[0.0, 0.0], A_eq=eq, b_eq=list(traffic.values()), method="highs")
    shares = {
        node: {e: round(float(x), 6) for (e, n, _), x in zip(pairs, result.x[:-1], strict=True) if n == node}
        for node in NODES
    }
    swapped = sum(float(x) for (_, _, resident), x in zip(pairs, result.x[:-1], strict=True) if not resident)
    return float(result.x[-1]), swapped, shares


def layouts(footprints: dict[str, Footprint], budget: int) -> list[tuple[dict[str, bool], dict[str, bool]]]:
    """Every layout of the experts on two alike nodes within the budget, each once."""
    experts = sorted(footprints)
    per_node = []
    for states in itertools.product((None, True, False), repeat=len(experts)):
        hosted = {e: s for e, s in zip(experts, states, strict=True) if s is not None}
        if memory_used(hosted.items(), footprints)[0] <= budget:
            per_node.append(hosted)
    out, seen = [], set()
    for a, b in itertools.product(per_node, repeat=2):
        if set(a) | set(b) != set(experts):
            continue
        key = tuple(sorted((tuple(sorted(a.items())), tuple(sorted(b.items())))))
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def describe(hosted: dict[str, bool]) -> str:
    return ", ".join(f"{e}{'' if r else ' (swapped)'}" for e, r in sorted(hosted.items())) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts-data", default=str(ROOT / "docs" / "data" / "bench-experts-5596d54.json"))
    parser.add_argument(
        "--max-tokens", type=at_least(1), default=24, help="tokens a request decodes (the bench's default)"
    )
    parser.add_argument("--json", default=str(ROOT / "docs" / "data" / "plan-bench-nodes.json"))
    args = parser.parse_args()
    from coserve.backends.registry import check_library
    from coserve.config import load_library
    from coserve.router.measured import with_measured_map

    library = with_measured_map(check_library(load_library()))
    probe = Cluster.model_validate({"nodes": [{"name": "probe", "ram": 0}]})
    footprints, traffic, required, _ = plan_inputs(library, probe)
    budget = node_budget({e: f.ram_bytes for e, f in footprints.items()})
    cluster = Cluster.model_validate({"nodes": [{"name": n, "ram": budget} for n in NODES]})
    measured = json.loads(Path(args.experts_data).read_text())["experts"]
    sources = {
        "estimated": {e: float(f.seconds_per_request or 1.0) for e, f in footprints.items()},
        "measured": {e: m["ttft_warm_s"] + args.max_tokens / m["decode_tok_s"] for e, m in measured.items()},
    }
    load_s = {e: m["ttft_cold_s"] - m["ttft_warm_s"] for e, m in measured.items()}
    mean_load_s = sum(traffic[e] * load_s[e] for e in traffic)
    results = {}
    for source, seconds in sources.items():
        timed = {e: Footprint(f.ram_bytes, f.accelerator_bytes, seconds[e]) for e, f in footprints.items()}
        factors = load_factors(cluster.nodes, timed, traffic)
        mean_request_s = sum(traffic[e] * seconds[e] for e in traffic)
        principled = mean_load_s / mean_request_s
        rows = []
        for layout in layouts(timed, budget):
            busiest, swapped, shares = best_split(layout, factors, traffic, 1.0)
            balanced, balanced_swapped, balanced_shares = best_split(layout, factors, traffic, 0.0)
            rows.append(
                {
                    "nodes": [describe(hosted) for hosted in layout],
                    "at_weight_1": {"busiest": round(busiest, 6), "swapped": round(swapped, 6), "shares": shares},
                    "most_balanced": {
                        "busiest": round(balanced, 6),
                        "swapped": round(balanced_swapped, 6),
                        "shares": balanced_shares,
                        "swapped_nodes": {NODES[j]: not any(h.values()) for j, h in enumerate(layout)},
                    },
                }
            )
        rows.sort(key=lambda r: r["at_weight_1"]["busiest"] + r["at_weight_1"]["swapped"])
        picks = {}
        for name, weight in (("default_weight_1", 1.0), ("principled_weight", principled)):
            weighted = cluster.model_copy(
                update={"planner": cluster.planner.model_copy(update={"cold_load_weight": weight})}
            )
            chosen = plan(weighted, timed, traffic, required=required)
            picks[name] = {
                "cold_load_weight": round(weight, 6),
                "nodes": [describe({r.expert: r.resident for r in chosen.on(n)}) for n in NODES],
                "busiest": round(chosen.busiest_load, 6),
                "swapped": round(chosen.cold_share, 6),
                "shares": {n: {r.expert: round(r.share, 6) for r in chosen.on(n)} for n in NODES},
            }
        kept = picks["default_weight_1"]
        best = min(rows, key=lambda r: (r["most_balanced"]["busiest"], r["most_balanced"]["swapped"]))
        gain = kept["busiest"] - best["most_balanced"]["busiest"]
        # a swapped node serving its experts in random order: a request meets a cold load when the one
        # before it was to another expert, probability sum_e p_e (1 - p_e) of the node's shares p_e
        reload = {}
        for node, served in best["most_balanced"]["shares"].items():
            total = sum(served.values())
            if best["most_balanced"]["swapped_nodes"][node] and total > 0:
                reload[node] = round(sum(v / total * (1 - v / total) for v in served.values()), 6)
        extra = best["most_balanced"]["swapped"] - kept["swapped"]
        results[source] = {
            "seconds_per_request": {e: round(s, 6) for e, s in sorted(seconds.items())},
            "mean_request_s": round(mean_request_s, 6),
            "layouts": rows,
            "picked": picks,
            "most_balanced": best["nodes"],
            "break_even_weight": round(gain / extra, 6) if extra > 0 else None,
            "most_balanced_cold_fraction": reload,
        }
        print(
            f"{source}: picked {kept['nodes']} (busiest {kept['busiest']:.3f}); balanced {best['nodes']} "
            f"at {best['most_balanced']['busiest']:.3f} with {best['most_balanced']['swapped']:.3f} swapped; "
            f"break-even weight {results[source]['break_even_weight']}; principled {principled:.3f} -> "
            f"{picks['principled_weight']['nodes']}"
        )
    payload = {
        "what": "feasible layouts of the default library on the cluster benchmark's two nodes, and the planner's pick",
        "budget_bytes": budget,
        "footprints": {e: f.ram_bytes for e, f in sorted(footprints.items())},
        "traffic": {e: round(t, 6) for e, t in sorted(traffic.items())},
        "max_tokens": args.max_tokens,
        "experts_data": str(Path(args.experts_data).relative_to(ROOT))
        if Path(args.experts_data).is_relative_to(ROOT)
        else args.experts_data,
        "load_s": {e: round(s, 6) for e, s in sorted(load_s.items())},
        "note": "pure computation (no timing); the measured seconds come from the experts data file, measured "
        "on a shared 2-core machine",
        "sources": results,
    }
    write_data(Path(args.json), payload, [".venv/bin/python", "scripts/plan_bench_nodes.py", *sys.argv[1:]])
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_script(main)
