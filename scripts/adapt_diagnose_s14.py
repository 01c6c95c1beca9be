"""The runs where the true alarm never comes, at AdaptOptions' defaults (session 14, branch nofire14).

Reads the defaults' 216 paired runs of ``adapt_tune_s14.py`` (``--runs``, e.g. docs/data/adapt-tuning-s14.json),
replays each run without a true alarm (its tuning split, budget and seed; ``adapt_tune.tuning_streams``: a split
of the benchmark's PRIOR half only, the benchmark's stream is never loaded) with the router's methods wrapped so
that nothing they compute changes (``adapt_diagnose_s13b._traced_replay``), checks that the replay gives the
file's figures, and records for the shocked expert:

* its share of the routed requests in the 500 before the shock, its static share, its share in the best fixed
  map after the shock;
* the first downward alarm on it before the shock, if any: its request and estimated shift, the mean residual
  the detector read on it over the 100 feedbacks before that alarm (how far its scores lay below its
  estimates), the feedbacks it got from that alarm to the shock and their mean residual (against the moved
  means);
* after the shock: its feedbacks, their mean residual, and the highest value of its CUSUM's down side.

The summary splits the runs in two: the false drop hit the expert later shocked, or not; and from the file
alone, the same count over the runs with a true alarm.

    python scripts/adapt_diagnose_s14.py --data ../shared/data/llmrouter --runs docs/data/adapt-tuning-s14.json \
        --json docs/data/adapt-diagnosis-s14-nofire.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from adapt_diagnose_s13b import _traced_replay  # beside this script
from adapt_tune import tuning_streams  # beside this script

from coserve.bench.adapt import CALIBRATION_FOLDS, AdaptOptions, FittedStream
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval.data import ExpertCosts, load_costs
from coserve.router.embedders import STACK_EMBEDDER

BEFORE = 100  # feedbacks before a false drop whose mean residual is recorded


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _diagnose(f: FittedStream, costs: ExpertCosts, run: dict[str, Any]) -> dict[str, Any]:
    options = AdaptOptions(budget_axis=run["axis"], target=run["target"], seed=run["seed"])
    report, trace = _traced_replay(f, costs, options)
    gap = report["quality"]["adaptive"] - report["quality"]["hindsight"]
    if report["recovery_requests"] != run["recovery_requests"] or abs(gap - run["adaptive_minus_hindsight"]) > 1e-9:
        raise RuntimeError(f"the replay of {run['split']} {run['axis']} {run['target']} {run['seed']} differs")
    shocked = list(f.stream.experts).index(report["shock"]["expert"])
    at = report["shock"]["at"]
    fb = np.array(trace["feedback"]) if trace["feedback"] else np.zeros((0, 4))
    mine = fb[fb[:, 1].astype(int) == shocked]
    request = mine[:, 0].astype(int)
    drops = [a for a in report["alarms"] if a["request"] < at and a["side"] == "down"]
    first = next((a for a in drops if a["expert"] == report["shock"]["expert"]), None)
    on_shocked = None
    if first is not None:
        before = mine[request < first["request"]][-BEFORE:]
        between = mine[(request > first["request"]) & (request < at)]
        on_shocked = {
            "request": first["request"], "shift": first["shift"],
            "mean_residual_before": _mean(before[:, 2]), "feedbacks_to_shock": len(between),
            "mean_residual_to_shock": _mean(between[:, 2]),
        }  # fmt: skip
    after = mine[request >= at]
    return {
        "split": run["split"], "axis": run["axis"], "target": run["target"], "seed": run["seed"],
        "shocked": report["shock"]["expert"], "static_share": report["shock"]["static_share"],
        "share_before": report["shock"]["share_before"], "best_share_after": report["shock"]["best_share_after"],
        "false_drops_before_shock": len(drops), "drop_on_shocked": on_shocked,
        "feedbacks_after_shock": len(after), "mean_residual_after_shock": _mean(after[:, 2]),
        "cusum_down_max_after_shock": float(after[:, 3].max()) if len(after) else 0.0,
        "recovery_requests": run["recovery_requests"], "adaptive_minus_hindsight": gap,
        "hindsight_met": gap >= -0.01, "recovery_met": run["recovery_requests"] <= 2000,
    }  # fmt: skip


def _summary(diagnosed: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    hit = [d for d in diagnosed if d["drop_on_shocked"] is not None]
    rest = [d for d in diagnosed if d["drop_on_shocked"] is None]
    with_true = [r for r in runs if r["true_alarm_delay"] is not None]
    early = [r for r in with_true if any(a["request"] < 6000 and a["side"] == "down" for a in r["alarms"])]
    shocked_of = {id(r): next(a["expert"] for a in r["alarms"] if a["true"]) for r in with_true}
    return {
        "runs_without_true_alarm": len(diagnosed),
        "with_false_drop_before_shock": sum(d["false_drops_before_shock"] > 0 for d in diagnosed),
        "false_drop_on_the_later_shocked_expert": len(hit),
        "of_those_share_before_shock_0": sum(d["share_before"] == 0 for d in hit),
        "of_those_no_feedback_from_drop_to_shock": sum(d["drop_on_shocked"]["feedbacks_to_shock"] == 0 for d in hit),
        "of_those_hindsight_met": sum(d["hindsight_met"] for d in hit),
        "of_those_recovery_met": sum(d["recovery_met"] for d in hit),
        "others": len(rest),
        "others_hindsight_met": sum(d["hindsight_met"] for d in rest),
        "others_recovery_met": sum(d["recovery_met"] for d in rest),
        "runs_with_true_alarm": len(with_true),
        "of_those_false_drop_before_shock": len(early),
        "of_those_on_the_later_shocked_expert": sum(
            any(a["request"] < 6000 and a["side"] == "down" and a["expert"] == shocked_of[id(r)] for a in r["alarms"])
            for r in early
        ),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jsonl and experts.json")
    parser.add_argument("--runs", type=Path, required=True, help="adapt_tune_s14.py's output (the defaults' runs)")
    parser.add_argument("--json", type=Path, required=True, help="write the per-run diagnosis here")
    args = parser.parse_args(argv)
    runs = json.loads(args.runs.read_text())["results"]["defaults"]["runs"]
    costs = load_costs(args.data / "experts.json")
    missing = [r for r in runs if r["true_alarm_delay"] is None]
    diagnosed = []
    for salt in sorted({r["split"] for r in missing}):
        fitted, _ = tuning_streams(args.data, costs, STACK_EMBEDDER, CALIBRATION_FOLDS, salt)
        for run in (r for r in missing if r["split"] == salt):
            diagnosed.append(_diagnose(fitted[run["axis"]], costs, run))
            print(json.dumps(diagnosed[-1]), flush=True)
    payload = {
        "note": "tuning runs on splits of the benchmark's prior half only, at AdaptOptions' defaults; the runs of "
        "--runs without a true alarm; residuals as the change detector read them; no timing",
        "runs_file": str(args.runs),
        "summary": _summary(diagnosed, runs),
        "runs": diagnosed,
    }
    print(json.dumps(payload["summary"]), flush=True)
    write_data(args.json, payload, "python scripts/adapt_diagnose_s14.py " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
