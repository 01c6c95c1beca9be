#!/usr/bin/env python
"""What ``coserve eval``'s bootstrap intervals add to an evaluation: seconds in ``add_intervals`` beside the whole.

    OPENBLAS_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/eval_interval_cost.py \\
        --data ../shared/data/llmrouter/train.jsonl --experts ../shared/data/llmrouter/experts.json \\
        --routers map-logistic,prompt-knn,hybrid --runs 3 --out docs/data/eval-interval-cost.json

Each run is one ``evaluate`` (5 grouped folds, seed 0) with intervals; the prompts are embedded (and
cached) before the first run, so the runs time fitting, sweeping and the bootstrap only. The report gives
each run's wall seconds, the seconds spent in the intervals, the operating points they covered, and the
median (min-max) of both over the runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script


def main() -> int:
    import sys

    import coserve.eval.harness as harness
    from coserve.eval.data import embed_cached, load_costs, load_outcomes
    from coserve.router.embedders import make_embedder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--experts", required=True)
    p.add_argument("--routers", required=True, help="comma-separated router names")
    p.add_argument("--embedder", default="minilm")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    outcomes, _ = load_outcomes(args.data)
    costs = load_costs(args.experts)
    embedder = make_embedder(args.embedder)
    embed_cached(outcomes.prompts, embedder)  # the cache the runs read: embedding is not timed
    spent: list[float] = []
    points: list[int] = []
    real = harness.add_intervals

    def timed(pts: list[Any], *rest: Any) -> None:
        started = time.perf_counter()
        real(pts, *rest)
        spent.append(time.perf_counter() - started)
        points.append(len(pts))

    harness.add_intervals = timed  # type: ignore[assignment]  (the harness calls it by this name)
    runs = []
    for run in range(args.runs):
        spent.clear()
        points.clear()
        started = time.perf_counter()
        harness.evaluate(outcomes, None, costs, folds=5, seed=0, routers=args.routers.split(","), embedder=embedder)
        wall = time.perf_counter() - started
        runs.append({"run": run, "wall_s": round(wall, 3), "intervals_s": round(sum(spent), 3), "points": sum(points)})
        print(f"run {run}: {wall:.1f} s, intervals {sum(spent):.2f} s over {sum(points)} points", file=sys.stderr)

    def summary(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}

    share = [r["intervals_s"] / r["wall_s"] for r in runs]
    payload = {
        "data": args.data,
        "n_prompts": len(outcomes),
        "routers": args.routers.split(","),
        "embedder": args.embedder,
        "runs": runs,
        "wall_s": summary("wall_s"),
        "intervals_s": summary("intervals_s"),
        "intervals_share": {"median": float(np.median(share)), "min": min(share), "max": max(share)},
    }
    write_data(Path(args.out), payload, ["python", "scripts/eval_interval_cost.py", *sys.argv[1:]])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
