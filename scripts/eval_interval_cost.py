#!/usr/bin/env python
"""What ``coserve eval``'s bootstrap intervals add to an evaluation: seconds in ``add_intervals`` beside the whole.

    OPENBLAS_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/eval_interval_cost.py \\
        --data ../shared/data/llmrouter/train.jsonl --experts ../shared/data/llmrouter/experts.json \\
        --routers map-logistic,prompt-knn,hybrid --runs 3 --out docs/data/eval-interval-cost.json

Each run is one ``evaluate`` (5 grouped folds, seed 0) with intervals; the prompts are embedded (and
cached) before the first run, so the runs time fitting, sweeping and the bootstrap only. The report gives
each run's wall seconds, the seconds spent in the intervals (``add_intervals`` and ``add_differences``), of
those the seconds in the summary figures' resamples and the differences between routers (``summary_s``),
the operating points they covered, and the median (min-max) of each over the runs. ``--alternate`` follows
each run with one without intervals (``intervals=False``), timed alike (``wall_without_s``).
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
    import coserve.eval.intervals as intervals
    from coserve.eval.data import embed_cached, load_costs, load_outcomes
    from coserve.router.embedders import make_embedder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--experts", required=True)
    p.add_argument("--routers", required=True, help="comma-separated router names")
    p.add_argument("--embedder", default="minilm")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--alternate", action="store_true", help="each run followed by one without intervals")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    outcomes, _ = load_outcomes(args.data)
    costs = load_costs(args.experts)
    embedder = make_embedder(args.embedder)
    embed_cached(outcomes.prompts, embedder)  # the cache the runs read: embedding is not timed
    spent: list[float] = []
    summary: list[float] = []  # the summary figures in each resample, and the differences between routers
    points: list[int] = []
    real, real_differences, metrics = harness.add_intervals, harness.add_differences, intervals.M

    def timed(pts: list[Any], *rest: Any) -> Any:
        started = time.perf_counter()
        out = real(pts, *rest)
        spent.append(time.perf_counter() - started)
        points.append(len(pts))
        return out

    def timed_differences(*given: Any) -> None:
        started = time.perf_counter()
        real_differences(*given)
        spent.append(time.perf_counter() - started)
        summary.append(spent[-1])

    class TimedMetrics:  # intervals' view of coserve.eval.metrics, its summary timed
        def __getattr__(self, name: str) -> Any:
            return getattr(metrics, name)

        def summary(self, *given: Any) -> Any:
            started = time.perf_counter()
            out = metrics.summary(*given)
            summary.append(time.perf_counter() - started)
            return out

    harness.add_intervals = timed  # type: ignore[assignment]  (the harness calls it by this name)
    harness.add_differences = timed_differences  # type: ignore[assignment]
    intervals.M = TimedMetrics()  # type: ignore[assignment]
    runs = []
    for run in range(args.runs):
        spent.clear()
        summary.clear()
        points.clear()
        started = time.perf_counter()
        harness.evaluate(outcomes, None, costs, folds=5, seed=0, routers=args.routers.split(","), embedder=embedder)
        wall = time.perf_counter() - started
        runs.append({"run": run, "wall_s": round(wall, 3), "intervals_s": round(sum(spent), 3),
                     "summary_s": round(sum(summary), 3), "points": sum(points)})  # fmt: skip
        print(f"run {run}: {wall:.1f} s, intervals {sum(spent):.2f} s (summary figures {sum(summary):.2f} s) "
              f"over {sum(points)} points", file=sys.stderr)  # fmt: skip
        if args.alternate:
            started = time.perf_counter()
            harness.evaluate(outcomes, None, costs, folds=5, seed=0, routers=args.routers.split(","),
                             embedder=embedder, intervals=False)  # fmt: skip
            runs[-1]["wall_without_s"] = round(time.perf_counter() - started, 3)
            print(f"run {run} without intervals: {runs[-1]['wall_without_s']:.1f} s", file=sys.stderr)

    def spread(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}

    share = [r["intervals_s"] / r["wall_s"] for r in runs]
    payload = {
        "data": args.data,
        "n_prompts": len(outcomes),
        "routers": args.routers.split(","),
        "embedder": args.embedder,
        "runs": runs,
        "wall_s": spread("wall_s"),
        "intervals_s": spread("intervals_s"),
        "summary_s": spread("summary_s"),
        **({"wall_without_s": spread("wall_without_s")} if args.alternate else {}),
        "intervals_share": {"median": float(np.median(share)), "min": min(share), "max": max(share)},
    }
    write_data(Path(args.out), payload, ["python", "scripts/eval_interval_cost.py", *sys.argv[1:]])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
