"""Session 19: the benchmark's checks over many seeds of its own split, at the defaults (nothing tuned).

The official figures are five llmrouter runs (15 B seeds 0-2, 20 B and $0.3 seed 0). A seed draws the
phases' mixes, the requests and the feedback noise; the fit (prior half, stream half) is the same for
every seed. This script replays the benchmark's own split at each official budget for seeds 0 to N-1 with
``router.online``'s defaults and counts how often each of the issue's four checks is met, so a reader can
tell a check that a run misses by the draw's luck from one that the router misses on most draws. Seeds 0
(and 1, 2 at 15 B) are the official runs: their figures are checked equal to the official files'.

    python scripts/adapt_seeds_s19.py --data ../shared/data/llmrouter --seeds 10 --json docs/data/adapt-seeds-s19.json
    python scripts/adapt_seeds_s19.py --data ../shared/data/routellm --file ../shared/data/routellm/mt_bench.jsonl \
        --seeds 10 --json docs/data/adapt-seeds-s19-mt-bench.json
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from adapt_ceiling_s15 import official_streams  # beside this script
from adapt_tune import BUDGETS, run_record

from coserve.bench.adapt import AdaptOptions, FittedStream, replay_adapt
from coserve.bench.kernel import blas_kernels
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval.data import ExpertCosts, load_costs

CHECKS = {
    "tracking": ("tracking_error_max", lambda v: v <= 0.02),
    "static": ("adaptive_minus_static", lambda v: v >= 0.01),
    "hindsight": ("adaptive_minus_hindsight", lambda v: v >= -0.01),
    "recovery": ("recovery_requests", lambda v: v <= 2000),
}


def replays(
    fitted: dict[str, FittedStream], costs: ExpertCosts, budgets: tuple[tuple[str, float], ...], seeds: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Every budget and seed at the defaults: the tuning scripts' per-run record, plus the shocked expert's
    share before the shock and under the best fixed map after it (a recovery the criterion cannot see: that
    map keeps more than 10% of the share before)."""
    runs = []
    for axis, target in budgets:
        f = fitted[axis]
        for seed in seeds:
            options = AdaptOptions(budget_axis=axis, target=target, seed=seed)
            args = (f.offline, f.stream, f.stream_category, costs, options, f.predicted, f.vectors, f.prior_fit)
            report = replay_adapt(*args)
            shock = report["shock"]
            runs.append({**run_record(report, axis, target, seed), "shock_expert": shock["expert"],
                         "share_before": shock["share_before"], "best_share_after": shock["best_share_after"],
                         "recovery_unreachable": shock["best_map_keeps_it"]})  # fmt: skip
    return runs


def per_budget(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget: how many seeds meet each check, and each figure's median and range."""
    out: dict[str, Any] = {}
    for key in sorted({(r["axis"], r["target"]) for r in runs}):
        mine = [r for r in runs if (r["axis"], r["target"]) == key]
        entry: dict[str, Any] = {"runs": len(mine)}
        for check, (field, met) in CHECKS.items():
            values = np.array([r[field] for r in mine], dtype=np.float64)
            entry[check] = {
                "met": int(sum(met(v) for v in values)),
                "median": float(np.median(values)),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        missed = [r for r in mine if r["recovery_requests"] > 2000]
        entry["recovery"]["missed_where_best_map_keeps_expert"] = sum(r["recovery_unreachable"] for r in missed)
        out[f"{key[0]}-{key[1]:g}"] = entry
    return out


def official_name(run: dict[str, Any], file: Path | None) -> str:
    """The official report's file name for ``run`` (``coserve bench adapt``'s documented commands)."""
    if file is not None:  # one official run per file: seed 0
        if run["seed"] != 0:
            return ""
        return f"adapt-routellm-{file.stem.replace('_', '-')}-price-{run['target']:g}.json"
    name = f"params-{run['target']:g}" if run["axis"] == "params" else f"price-{run['target']:g}"
    return f"adapt-llmrouter-{name}{'' if run['seed'] == 0 else '-seed' + str(run['seed'])}.json"


def official_figures(runs: list[dict[str, Any]], official: Path, file: Path | None) -> list[dict[str, Any]]:
    """Each run that is an official one (its file in ``official``) against that file's figures."""
    out = []
    for r in runs:
        name = official_name(r, file)
        path = official / name
        if not name or not path.exists():
            continue
        report = json.loads(path.read_text())
        q = report["quality"]
        theirs = {"adaptive_minus_hindsight": q["adaptive"] - q["hindsight"],
                  "adaptive_minus_static": q["adaptive"] - q["static"],
                  "tracking_error_max": report["tracking_error_max"],
                  "recovery_requests": report["recovery_requests"]}  # fmt: skip
        equal = all(np.isclose(r[k], v, rtol=0, atol=1e-12) for k, v in theirs.items())
        out.append({"file": str(path), "seed": r["seed"], "equal": bool(equal)})
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with experts.json (and train.jsonl)")
    parser.add_argument("--json", type=Path, required=True, help="write the runs and their counts here")
    parser.add_argument("--file", type=Path, help="instead of train.jsonl: this outcome file split in halves")
    parser.add_argument("--budget-price", type=float, default=5.0, help="--file's budget (price; the RouteLLM runs' 5)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 to N-1 per budget")
    parser.add_argument("--official", type=Path, default=Path("docs/data/adapt-repro-s18"),
                        help="folder of the official files the seeds they share are checked against")  # fmt: skip
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    costs = load_costs(args.data / "experts.json")
    seeds = tuple(range(args.seeds))
    if args.file is not None:
        fitted = official_streams(args.file, costs, ("price",))
        budgets = (("price", args.budget_price),)
    else:
        fitted = official_streams(args.data / "train.jsonl", costs, ("params", "price"))
        budgets = BUDGETS
    runs = replays(fitted, costs, budgets, seeds)
    counts = per_budget(runs)
    for budget, entry in counts.items():
        line = ", ".join(f"{c} {entry[c]['met']}/{entry['runs']}" for c in CHECKS)
        kept = entry["recovery"]["missed_where_best_map_keeps_expert"]
        print(f"{budget}: {line} ({kept} recovery misses where the best map keeps the expert); "
              f"adaptive - hindsight median {entry['hindsight']['median']:+.4f}", flush=True)  # fmt: skip
    payload = {
        "note": "the benchmark's own split (prior half, stream half), router.online's defaults, seeds 0..N-1 per "
        "budget; 'met' counts the seeds meeting each of the issue's four checks",
        "data": str(args.file or args.data / "train.jsonl"),
        "blas": blas_kernels(),
        "seeds": list(seeds),
        "per_budget": counts,
        "official_runs_reproduced": official_figures(runs, args.official, args.file),
        "runs": runs,
    }
    for entry in payload["official_runs_reproduced"]:
        print(f"official {entry['file']}: {'equal' if entry['equal'] else 'DIFFERS'}", flush=True)
    write_data(args.json, payload, "python scripts/adapt_seeds_s19.py " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
