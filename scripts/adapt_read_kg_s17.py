"""Which checks a setting gains and loses against the defaults, read from paired run files (session 17).

Reads the per-run records that ``adapt_tune_s14.py`` writes (no replay): for every setting in each ``--runs`` file
other than ``defaults``, against that file's ``defaults`` on the same runs (split, budget, seed):

* per check (tracking, static, hindsight, recovery) and budget, the runs that meet it only with the setting
  (gained) and only with the defaults (lost);
* per budget, the mean difference of adaptive - hindsight and of the recovery requests;
* the recovery split in two over the runs with a true alarm under both (the first downward alarm on the shocked
  expert after the shock): the true alarm's delay, and the requests from that alarm to the recovery;
* per shocked expert (named by the setting's true alarm), the runs and their mean recovery difference;
* the runs whose recovery check is lost, with their true alarms, false drops and explored share.

    python scripts/adapt_read_kg_s17.py --runs docs/data/adapt-tuning-s16-kg.json \
        docs/data/adapt-tuning-s16-kg-settle.json --json docs/data/adapt-reading-s17-kg.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from coserve.bench.paired import CHECKS, checks_of, run_key
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script

Run = dict[str, Any]
SLOW_AFTER_ALARM = 1500  # requests from the true alarm to the recovery counted as slow


def budget(run: Run) -> str:
    """The run's budget as the benchmark names it: ``params 15``, ``price 0.3``."""
    return f"{run['axis']} {float(run['target']):g}"


def shocked_expert(run: Run) -> str | None:
    """The expert of the run's first true alarm (None: none came)."""
    return next((str(a["expert"]) for a in run["alarms"] if a["true"]), None)


def false_drops(run: Run) -> int:
    return sum(1 for a in run["alarms"] if not a["true"] and a["side"] == "down")


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _budget_means(figures: dict[str, list[float]]) -> dict[str, Any]:
    """One budget's runs: their count, net checks, mean adaptive - hindsight and recovery differences."""
    return {
        "runs": len(figures["checks"]),
        "checks": int(sum(figures["checks"])),
        "adaptive_minus_hindsight": _mean(figures["gap"]),
        "recovery_requests": _mean(figures["recovery"]),
    }


def reading(candidate: list[Run], reference: list[Run]) -> dict[str, Any]:
    """``candidate`` against ``reference`` run by run (the same keys, each once; ValueError otherwise)."""
    ref = {run_key(r): r for r in reference}
    cand = {run_key(r): r for r in candidate}
    if len(ref) != len(reference) or len(cand) != len(candidate) or set(ref) != set(cand):
        raise ValueError("the two settings' runs differ or repeat a key")
    checks: dict[str, dict[str, dict[str, int]]] = {name: {} for name in CHECKS}
    per_budget: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    delays, after, slow = [], [], [0, 0]
    by_expert: dict[str, list[float]] = defaultdict(list)
    lost_recovery = []
    for key, r in ref.items():
        c, b = cand[key], budget(r)
        met_c, met_r = checks_of(c), checks_of(r)
        for name in CHECKS:
            cell = checks[name].setdefault(b, {"gained": 0, "lost": 0})
            cell["gained"] += int(met_c[name] and not met_r[name])
            cell["lost"] += int(met_r[name] and not met_c[name])
        per_budget[b]["checks"].append(sum(met_c.values()) - sum(met_r.values()))
        per_budget[b]["gap"].append(c["adaptive_minus_hindsight"] - r["adaptive_minus_hindsight"])
        per_budget[b]["recovery"].append(c["recovery_requests"] - r["recovery_requests"])
        if c["true_alarm_delay"] is not None and r["true_alarm_delay"] is not None:
            delays.append(c["true_alarm_delay"] - r["true_alarm_delay"])
            c_after = c["recovery_requests"] - c["true_alarm_delay"]
            r_after = r["recovery_requests"] - r["true_alarm_delay"]
            after.append(c_after - r_after)
            slow[0] += int(c_after > SLOW_AFTER_ALARM)
            slow[1] += int(r_after > SLOW_AFTER_ALARM)
            by_expert[str(shocked_expert(c))].append(c["recovery_requests"] - r["recovery_requests"])
        if met_r["recovery"] and not met_c["recovery"]:
            lost_recovery.append(
                {
                    "run": list(key),
                    "true_alarm_delay": [c["true_alarm_delay"], r["true_alarm_delay"]],
                    "recovery_requests": [c["recovery_requests"], r["recovery_requests"]],
                    "false_drops": [false_drops(c), false_drops(r)],
                    "shocked_expert": shocked_expert(c) or shocked_expert(r),
                    "explored_share": c.get("explored_share", 0.0),
                }
            )
    later = [x for x in lost_recovery if None not in x["true_alarm_delay"]]
    return {
        "order": "[setting, defaults] in each pair",
        "checks": checks,
        "per_budget": {b: _budget_means(v) for b, v in sorted(per_budget.items())},
        "both_true_alarm": {
            "runs": len(delays),
            "delay_mean": _mean(delays),
            "delay_median": float(np.median(delays)) if delays else None,
            "alarm_later": sum(d > 0 for d in delays),
            "alarm_earlier": sum(d < 0 for d in delays),
            "after_alarm_mean": _mean(after),
            "after_alarm_median": float(np.median(after)) if after else None,
            f"after_alarm_over_{SLOW_AFTER_ALARM}": slow,
        },
        "by_shocked_expert": {e: {"runs": len(v), "recovery_mean": _mean(v)} for e, v in sorted(by_expert.items())},
        "recovery_lost": lost_recovery,
        "recovery_lost_alarm_later": sum(x["true_alarm_delay"][0] > x["true_alarm_delay"][1] for x in later),
        "recovery_lost_no_true_alarm": len(lost_recovery) - len(later),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="adapt_tune_s14.py's output files")
    parser.add_argument("--json", type=Path, required=True, help="write the reading here")
    args = parser.parse_args(argv)
    readings: dict[str, Any] = {}
    for path in args.runs:
        try:
            results = json.loads(path.read_text())["results"]
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"{path}: not a run file of adapt_tune_s14.py ({exc})")
        if "defaults" not in results:
            parser.error(f"{path}: no 'defaults' runs to read against")
        for name, result in results.items():
            if name == "defaults":
                continue
            try:
                readings[name] = {"file": str(path), **reading(result["runs"], results["defaults"]["runs"])}
            except ValueError as exc:
                parser.error(f"{path}: {name}: {exc}")
                print(name, json.dumps(readings[name]["checks"]), flush=True)
    write_data(args.json, {"readings": readings}, "python scripts/adapt_read_kg_s17.py " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
