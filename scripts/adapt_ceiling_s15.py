"""Session 15: how far below hindsight a router that knew everything would stand (issue 15's ceilings).

The benchmark's hindsight baseline is the best fixed category map for the stream's true scores at the adaptive
run's realised average cost. This script replays a run (``coserve bench adapt``'s replay, every setting at its
default) and scores, on the same drawn requests, maps that know more than any online router can, each held at
the adaptive run's realised cost ``R``:

* ``fixed_table_phases``: hindsight's own table, but each phase's map at cost ``R`` (the issue's tracking target
  asks every window to hold the budget; a fixed map only needs its average to): the price of tracking;
* ``pool_phases``: per phase, the map from the stream pool's own per-category means (every stream item counted
  once, the shock known from the request it comes on), at cost ``R``: the ceiling of a category router that
  had learnt every cell exactly and detected the shock at once;
* ``prompt_pool_phases``: per phase, each prompt routed by its offline per-prompt predictions corrected by the
  pool's mean residual per (category, expert) cell, at cost ``R``: the same ceiling for routing per prompt
  (the default, ``granularity: prompt``);
* ``drawn_phases``: per phase, the map from the phase's own drawn requests' means (in-sample, so optimistic:
  hindsight's optimism at a finer grain);
* ``prompt_only_phases``: the per-prompt predictions alone, nothing learnt, at cost ``R`` per phase;
* ``known_shock``: the adaptive run again, the router told of the shock at the request it comes on (the
  shocked expert's means moved by the shock's own size in every category and its cells cut to
  ``reset_count`` pseudo-counts, as a perfect change detector's alarm would): what detecting the shock
  sooner can give at most;
* ``no_shock``: the adaptive run, static, hindsight and ``pool_phases`` again with ``shock`` 0.

Differences are against hindsight. The replay's shock falls on a phase boundary at the benchmark's 4 phases
(request 6,000 of 12,000), so the phases are the segments with stationary truth and mix.

    python scripts/adapt_ceiling_s15.py --data ../shared/data/llmrouter --official \
        --json docs/data/adapt-ceiling-s15.json
    python scripts/adapt_ceiling_s15.py --data ../shared/data/llmrouter --json docs/data/adapt-ceiling-s15-tuning.json

``--file F``: one run on the outcome file F split in halves at ``--budget-price`` (seed 0), as the RouteLLM runs:

    python scripts/adapt_ceiling_s15.py --data ../shared/data/routellm --file ../shared/data/routellm/mt_bench.jsonl \\
        --json docs/data/adapt-ceiling-s15-mt-bench.json

``--official``: the five official llmrouter runs (the benchmark's prior and stream halves, 15 B seeds 0-2, 20 B,
$0.3); without it the tuning splits of adapt_tune_s14.py (inside the benchmark's prior half; the benchmark's
stream is never replayed), the three budgets x ``--seeds``. A diagnosis: nothing here is tuned.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

import argparse
import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from adapt_tune import BUDGETS, tuning_streams  # beside this script
from adapt_tune_s14 import SALTS

from coserve.bench.adapt import CALIBRATION_FOLDS, AdaptOptions, FittedStream, fit_stream, replay_adapt, split_by_prompt
from coserve.bench.adapt_baselines import category_means, lagrangian_mix, mix_of
from coserve.bench.kernel import blas_kernels, kernel_cache
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval.data import ExpertCosts, embed_cached, load_costs, load_outcomes
from coserve.router.embedders import STACK_EMBEDDER, make_embedder
from coserve.router.online import OnlineRouter

OFFICIAL = (("params", 15.0, 0), ("params", 15.0, 1), ("params", 15.0, 2), ("params", 20.0, 0), ("price", 0.3, 0))
PHASE_CEILINGS = ("fixed_table_phases", "pool_phases", "prompt_pool_phases", "drawn_phases", "prompt_only_phases")
CEILINGS = ("known_shock", *PHASE_CEILINGS)


def official_streams(outcomes: Path, costs: ExpertCosts, axes: tuple[str, ...]) -> dict[str, FittedStream]:
    """The benchmark's own fit: prior half, stream half (``coserve bench adapt`` without ``--stream``)."""
    rows, _ = load_outcomes(outcomes, on_bad="skip")
    cache = kernel_cache(blas_kernels())
    X = embed_cached(rows.prompts, make_embedder("minilm"), cache)
    P = embed_cached(rows.prompts, make_embedder(STACK_EMBEDDER), cache)
    a, b = split_by_prompt(rows)
    folds = CALIBRATION_FOLDS if len(set(rows.subset(a).categories)) > 1 else 0  # one category: no cross-fit
    return {
        axis: fit_stream(rows.subset(a), X[a], rows.subset(b), X[b], costs, axis, (P[a], P[b]), folds) for axis in axes
    }


def per_prompt_at(estimate: np.ndarray, truth: np.ndarray, cost: np.ndarray, spend: float) -> float:
    """Quality of routing each request to argmax(estimate - w cost), w set so that the average cost is
    ``spend`` (a mix of the two weights either side, as ``lagrangian_mix``'s randomised maps)."""
    rows = np.arange(len(estimate))

    def at(weight: float) -> tuple[float, float]:
        choice = np.argmax(estimate - weight * cost[None, :], axis=1)
        return float(truth[rows, choice].mean()), float(cost[choice].mean())

    if at(0.0)[1] <= spend:
        return at(0.0)[0]
    low, high = 0.0, 1.0
    while at(high)[1] > spend and high < 1e9:
        high *= 2
    if at(high)[1] > spend:
        return at(high)[0]
    for _ in range(50):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if at(middle)[1] > spend else (low, middle)
    (q_dear, c_dear), (q_cheap, c_cheap) = at(low), at(high)
    share = (spend - c_cheap) / (c_dear - c_cheap) if c_dear > c_cheap else 0.0
    return share * q_dear + (1 - share) * q_cheap


def ceilings(f: FittedStream, costs: ExpertCosts, options: AdaptOptions, report: dict[str, Any]) -> dict[str, float]:
    """The maps that know more, on the replay's own drawn requests (the draw repeated from the seed)."""
    from coserve.bench.adapt import _draw_stream

    items, _ = _draw_stream(np.asarray(f.stream.categories), options, np.random.default_rng(options.seed))
    n, K = len(items), f.offline.shape[0]
    aligned = costs.aligned(f.stream.experts)
    cost = aligned.params_b if options.budget_axis == "params" else aligned.price
    pool = np.nan_to_num(np.asarray(f.stream.scores, dtype=np.float64), nan=0.0)
    pool_category = np.asarray(f.stream_category)
    shocked, shock_at = report["experts"].index(report["shock"]["expert"]), n // 2
    truth, category, predicted = pool[items], pool_category[items], f.predicted[items]
    truth[shock_at:, shocked] = np.clip(truth[shock_at:, shocked] - options.shock, 0.0, 1.0)
    spend = report["realised_avg_cost"]
    hindsight_table = category_means(truth, category, K)
    per = -(-n // options.phases)
    sums = dict.fromkeys(PHASE_CEILINGS, 0.0)
    for start in range(0, n, per):
        part = slice(start, min(start + per, n))
        size, mix = part.stop - part.start, mix_of(category[part], K)
        drawn = category_means(truth[part], category[part], K)
        known = pool.copy()
        if start >= shock_at:
            known[:, shocked] = np.clip(known[:, shocked] - options.shock, 0.0, 1.0)
        pool_table = category_means(known, pool_category, K)
        residual = np.zeros_like(pool_table)
        for k in range(K):
            rows = pool_category == k
            if rows.any():
                residual[k] = (known[rows] - f.predicted[rows]).mean(axis=0)
        sums["fixed_table_phases"] += lagrangian_mix(hindsight_table, drawn, mix, cost, spend)["quality"] * size
        sums["pool_phases"] += lagrangian_mix(pool_table, drawn, mix, cost, spend)["quality"] * size
        sums["drawn_phases"] += lagrangian_mix(drawn, drawn, mix, cost, spend)["quality"] * size
        corrected = predicted[part] + residual[category[part]]
        sums["prompt_pool_phases"] += per_prompt_at(corrected, truth[part], cost, spend) * size
        sums["prompt_only_phases"] += per_prompt_at(predicted[part], truth[part], cost, spend) * size
    return {name: total / n for name, total in sums.items()}


@contextlib.contextmanager
def told_of_shock(expert: int, at: int, shift: float) -> Any:
    """Within: every OnlineRouter, once it has served ``at`` requests, moves ``expert``'s means by ``-shift`` and
    cuts its cells to ``reset_count`` pseudo-counts (what its own detector does at a true alarm, sized exactly)."""
    served = OnlineRouter.served

    def patched(router: OnlineRouter, expert_served: int) -> None:
        served(router, expert_served)
        if router._served == at:
            reset = router.change.reset_count if router.change is not None else 2.0
            router.posterior.rebase(expert, -shift, reset)
            if router.detector is not None:
                router.detector.rebased(expert)
            router._changed()

    OnlineRouter.served = patched  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        OnlineRouter.served = served  # type: ignore[method-assign]


def one_run(f: FittedStream, costs: ExpertCosts, axis: str, target: float, seed: int) -> dict[str, Any]:
    replay = (f.offline, f.stream, f.stream_category, costs)
    extra = (f.predicted, f.vectors, f.prior_fit)
    options = AdaptOptions(budget_axis=axis, target=target, seed=seed)
    report = replay_adapt(*replay, options, *extra)
    q = report["quality"]
    record: dict[str, Any] = {"axis": axis, "target": target, "seed": seed, "realised": report["realised_avg_cost"]}
    record.update(adaptive=q["adaptive"], static=q["static"], hindsight=q["hindsight"])
    record.update(ceilings(f, costs, options, report))
    shocked = report["experts"].index(report["shock"]["expert"])
    with told_of_shock(shocked, report["shock"]["at"], options.shock):
        told = replay_adapt(*replay, options, *extra)
    record["known_shock"] = told["quality"]["adaptive"]
    record["known_shock_recovery"] = told["recovery_requests"]
    record["recovery"] = report["recovery_requests"]
    calm = AdaptOptions(budget_axis=axis, target=target, seed=seed, shock=0.0)
    calm_report = replay_adapt(*replay, calm, *extra)
    cq = calm_report["quality"]
    record["no_shock"] = {
        "adaptive": cq["adaptive"], "static": cq["static"], "hindsight": cq["hindsight"],
        "pool_phases": ceilings(f, costs, calm, calm_report)["pool_phases"],
    }  # fmt: skip
    return record


def against_hindsight(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the mean, min and max over runs of (figure - hindsight), and the runs at or above -0.01."""
    out: dict[str, Any] = {}
    for name in ("adaptive", "static", *CEILINGS):
        gaps = np.array([r[name] - r["hindsight"] for r in runs])
        out[name] = {"mean": float(gaps.mean()), "min": float(gaps.min()), "max": float(gaps.max()),
                     "meets_minus_0.01": int((gaps >= -0.01).sum())}  # fmt: skip
    for name in ("adaptive", "static", "pool_phases"):
        gaps = np.array([r["no_shock"][name] - r["no_shock"]["hindsight"] for r in runs])
        out["no_shock_" + name] = {"mean": float(gaps.mean()), "min": float(gaps.min()), "max": float(gaps.max()),
                                   "meets_minus_0.01": int((gaps >= -0.01).sum())}  # fmt: skip
    out["runs"] = len(runs)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jsonl and experts.json")
    parser.add_argument("--json", type=Path, required=True, help="write the runs and their summary here")
    parser.add_argument("--official", action="store_true", help="the five official llmrouter runs")
    parser.add_argument(
        "--file",
        type=Path,
        help="instead: one run on this outcome file split in halves (seed 0; experts.json beside it)",
    )
    parser.add_argument("--budget-price", type=float, default=5.0, help="--file's budget (price; the RouteLLM runs' 5)")
    parser.add_argument("--seeds", type=int, default=9, help="tuning splits: seeds 0 to N-1 per split and budget")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    costs = load_costs(args.data / "experts.json")
    runs: list[dict[str, Any]] = []
    if args.file is not None:
        fitted = official_streams(args.file, costs, ("price",))
        runs.append({"split": str(args.file), **one_run(fitted["price"], costs, "price", args.budget_price, 0)})
    elif args.official:
        fitted = official_streams(args.data / "train.jsonl", costs, ("params", "price"))
        for axis, target, seed in OFFICIAL:
            runs.append({"split": "benchmark", **one_run(fitted[axis], costs, axis, target, seed)})
            print(runs[-1]["axis"], target, seed, f"{runs[-1]['adaptive'] - runs[-1]['hindsight']:+.4f}", flush=True)
    else:
        for salt in SALTS:
            fitted, _ = tuning_streams(args.data, costs, STACK_EMBEDDER, CALIBRATION_FOLDS, salt)
            for axis, target in BUDGETS:
                runs += [{"split": salt, **one_run(fitted[axis], costs, axis, target, s)} for s in range(args.seeds)]
            print(salt, len(runs), flush=True)
    summary = against_hindsight(runs)
    for name, figures in summary.items():
        if isinstance(figures, dict):
            print(f"{name:24s} - hindsight: mean {figures['mean']:+.4f} [{figures['min']:+.4f}, {figures['max']:+.4f}]"
                  f", >= -0.01 in {figures['meets_minus_0.01']} of {len(runs)}")  # fmt: skip
    payload = {
        "note": "ceilings on the replay's own drawn requests, each at the adaptive run's realised cost; differences "
        "against hindsight; 'phases' maps hold that cost in each of the 4 phases (the shock on a phase boundary)",
        "blas": blas_kernels(),
        "official": args.official,
        "summary": summary,
        "runs": runs,
    }
    write_data(args.json, payload, "python scripts/adapt_ceiling_s15.py " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
