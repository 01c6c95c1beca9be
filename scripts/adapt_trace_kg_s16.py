"""Where ``explore_policy: kg``'s explorations go after a true alarm (session 16, branch voi16b).

On the paired runs of ``adapt_tune_s14.py`` (docs/data/adapt-tuning-s16-kg.json), ``kg`` (cap 5%, horizon 100)
recovered later than the defaults. This script replays ``kg`` (and any other ``adapt_tune_s14.SETTINGS`` given) on
a few tuning splits (``adapt_tune.tuning_streams``: splits of the benchmark's PRIOR half only; the benchmark's
stream is never loaded), with the router's choice wrapped so that nothing it computes changes, and records per run
with a true alarm (the first downward alarm on the shocked expert after the shock):

* the knowledge-gradient explorations after it, and how many went to the shocked expert (before the recovery too);
* the recovery, and the recovery read with those explorations of the shocked expert taken out of its traffic (a
  first-order count: the later decisions and feedback are left as they were);
* the defaults' true alarm and recovery on the same run, from ``--runs``.

    python scripts/adapt_trace_kg_s16.py --data ../shared/data/llmrouter --runs docs/data/adapt-tuning-s16-kg.json \
        --json docs/data/adapt-trace-s16-kg.json
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
from adapt_tune import BUDGETS, tuning_streams  # beside this script
from adapt_tune_s14 import SETTINGS  # beside this script

from coserve.bench.adapt import CALIBRATION_FOLDS, AdaptOptions, FittedStream, replay_adapt
from coserve.bench.adapt_baselines import recovery
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval.data import ExpertCosts, load_costs
from coserve.router.embedders import STACK_EMBEDDER
from coserve.router.online_choice import OnlineChoice
from coserve.router.online_map import Decision


def _traced(f: FittedStream, costs: ExpertCosts, options: AdaptOptions) -> tuple[dict[str, Any], np.ndarray]:
    """The replay's report, and per request ``[n, 2]``: the expert chosen, whether the knowledge gradient chose it."""
    decided: list[tuple[int, bool]] = []
    choose, informed = OnlineChoice._choose, OnlineChoice._informed
    picked = [False]

    def informing(self: OnlineChoice, *args: Any) -> int | None:
        expert = informed(self, *args)
        picked[0] = expert is not None
        return expert

    def choosing(self: OnlineChoice, *args: Any) -> Decision:
        picked[0] = False
        decision = choose(self, *args)
        decided.append((decision.expert, picked[0] and decision.explored))
        return decision

    OnlineChoice._choose, OnlineChoice._informed = choosing, informing  # type: ignore[method-assign]
    try:
        report = replay_adapt(f.offline, f.stream, f.stream_category, costs, options, f.predicted, f.vectors,
                              f.prior_fit)  # fmt: skip
    finally:
        OnlineChoice._choose, OnlineChoice._informed = choose, informed  # type: ignore[method-assign]
    return report, np.array(decided, dtype=np.int64).reshape(-1, 2)


def _record(report: dict[str, Any], decided: np.ndarray, window: int) -> dict[str, Any]:
    chosen, by_kg = decided[:, 0], decided[:, 1].astype(bool)
    shocked, at = report["experts"].index(report["shock"]["expert"]), report["shock"]["at"]
    true = [a["request"] for a in report["alarms"] if a["true"]]
    record: dict[str, Any] = {"true_alarm_delay": true[0] - at if true else None}
    record["recovery_requests"] = report["recovery_requests"]
    if not true:
        return record
    after = np.arange(len(chosen)) >= true[0]
    before_recovery = after & (np.arange(len(chosen)) < at + report["recovery_requests"])
    on_shocked = by_kg & after & (chosen == shocked)
    without = chosen.copy()
    without[on_shocked] = -1  # those requests not counted as the shocked expert's traffic
    record.update(
        kg_explorations_after=int((by_kg & after).sum()),
        to_shocked=int(on_shocked.sum()),
        to_shocked_before_recovery=int((on_shocked & before_recovery).sum()),
        recovery_without_them=recovery(without, shocked, at, window),
    )
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the llmrouter data folder")
    parser.add_argument("--runs", type=Path, required=True, help="adapt_tune_s14.py's output with the defaults' runs")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--salts", default="tune2,tune3", help="comma-separated tuning splits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", default="kg,kg_settle", help="comma-separated names of adapt_tune_s14's SETTINGS")
    args = parser.parse_args(argv)
    names = args.settings.split(",")
    if not set(names) <= set(SETTINGS):
        parser.error(f"--settings: of {', '.join(SETTINGS)}")
    defaults = {(r["split"], r["axis"], r["target"], r["seed"]): r for r in json.loads(args.runs.read_text())["results"]
                ["defaults"]["runs"]}  # fmt: skip
    costs = load_costs(args.data / "experts.json")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for salt in args.salts.split(","):
        fitted, _ = tuning_streams(args.data, costs, STACK_EMBEDDER, CALIBRATION_FOLDS, salt)
        for name in names:
            for (axis, target), seed in ((b, s) for b in BUDGETS for s in range(args.seeds)):
                options = AdaptOptions(budget_axis=axis, target=target, seed=seed, **SETTINGS[name])
                record = _record(*_traced(fitted[axis], costs, options), options.window)
                base = defaults.get((salt, axis, target, seed), {})
                record.update(split=salt, axis=axis, target=target, seed=seed,
                              defaults_true_alarm_delay=base.get("true_alarm_delay"),
                              defaults_recovery_requests=base.get("recovery_requests"))  # fmt: skip
                runs[name].append(record)
                print(name, json.dumps(record), flush=True)
    summary = {}
    for name, records in runs.items():
        alarmed = [r for r in records if r["true_alarm_delay"] is not None]
        cut = [r["recovery_requests"] - r["recovery_without_them"] for r in alarmed]
        summary[name] = {
            "runs": len(records), "with_true_alarm": len(alarmed),
            "kg_explorations_after": sum(r["kg_explorations_after"] for r in alarmed),
            "to_shocked": sum(r["to_shocked"] for r in alarmed),
            "to_shocked_before_recovery": sum(r["to_shocked_before_recovery"] for r in alarmed),
            "recovery_cut_mean": float(np.mean(cut)) if cut else None,
            "recovery_cut_median": float(np.median(cut)) if cut else None,
            "recovery_minus_defaults": sum(r["recovery_requests"] - r["defaults_recovery_requests"] for r in alarmed
                                           if r["defaults_recovery_requests"] is not None),
        }  # fmt: skip
        print(name, summary[name], flush=True)
    payload = {"note": "tuning splits of the benchmark's prior half only", "settings": {n: SETTINGS[n] for n in names},
               "summary": summary, "runs": runs}  # fmt: skip
    write_data(args.json, payload, "python scripts/adapt_trace_kg_s16.py " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
