"""Why the true alarm comes late, on the 27 tuning runs at AdaptOptions' defaults (session 13, branch adapt13b).

Replays each tuning run (the three budgets, seeds 0 to 8; ``adapt_tune.tuning_streams``: a split of the
benchmark's PRIOR half only, the benchmark's stream is never loaded) with the router's ``served``,
``feedback`` and the change detector's ``observe`` wrapped so that nothing they compute changes, and records
per run, for the shocked expert:

* its share of the routed requests and of the feedbacks in the 500 requests before the shock, from the shock
  to the first true alarm, and from that alarm to recovery;
* the feedbacks it received between the shock and the alarm; the down side of its CUSUM at the shock, how
  often it fell back to 0 after the shock, and the feedbacks of its last climb (from its last 0 to the alarm);
* the mean residual the detector read on it before the shock (its bias) and between the shock and the alarm
  (and their standard deviations: how much evidence one feedback carries), and the true shift of those
  feedbacks' items (``clip(t - shock, 0, 1) - t``: the drop diluted by the clip);
* the estimated shift at the alarm, and its routing estimate (over the categories it served before the
  shock, weighed by that traffic) just before the alarm, just after it and at recovery, against the true
  means before and after the shock: how much of the drop the alarm's move gives, how much the posterior.

    python scripts/adapt_diagnose_s13b.py --data ../shared/data/llmrouter --json docs/data/adapt-diagnosis-s13b.json

Knows nothing about the checks: ``adapt_tune`` scores them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from adapt_tune import BUDGETS, CONFIRM_SEEDS, SEEDS, TUNING_SALT, tuning_streams  # beside this script

from coserve.bench.adapt import CALIBRATION_FOLDS, AdaptOptions, FittedStream, _draw_stream, replay_adapt
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval.data import ExpertCosts, load_costs
from coserve.router.drift import ChangeDetector
from coserve.router.embedders import STACK_EMBEDDER
from coserve.router.online import OnlineRouter

Trace = dict[str, list[Any]]


def _traced_replay(f: FittedStream, costs: ExpertCosts, options: AdaptOptions) -> tuple[dict[str, Any], Trace]:
    """``replay_adapt``'s report, and what the wrapped methods saw (per request: the expert served; per
    feedback: request, expert, the detector's residual, its down side before it; every 50 requests the routing
    estimate)."""
    trace: Trace = {"served": [], "feedback": [], "estimate": []}
    served, feedback, observe = OnlineRouter.served, OnlineRouter.feedback, ChangeDetector.observe
    now = [0, -1]  # the request being fed back, the expert

    def serving(self: OnlineRouter, expert: int) -> None:
        trace["served"].append(expert)
        if len(trace["served"]) % 50 == 0:
            trace["estimate"].append(self.posterior.estimate().copy())
        served(self, expert)

    def feeding(self: OnlineRouter, category: int, expert: int, *args: Any, **kwargs: Any) -> None:
        now[0], now[1] = self._served - 1, expert
        before = self.alarms
        estimate = self.posterior.estimate()[:, expert].copy()
        feedback(self, category, expert, *args, **kwargs)
        if self.alarms > before:
            trace.setdefault("alarm_moves", []).append((now[0], expert, estimate, self.posterior.estimate()[:, expert]))

    def observing(self: ChangeDetector, expert: int, residual: float, estimate: float = 1.0) -> float | None:
        trace["feedback"].append((now[0], expert, residual, float(self.stat["down"][expert])))
        return observe(self, expert, residual, estimate)

    OnlineRouter.served, OnlineRouter.feedback = serving, feeding  # type: ignore[method-assign]
    ChangeDetector.observe = observing  # type: ignore[method-assign]
    try:
        args = (f.offline, f.stream, f.stream_category, costs, options, f.predicted, f.vectors, f.prior_fit)
        report = replay_adapt(*args)
    finally:
        OnlineRouter.served, OnlineRouter.feedback = served, feedback  # type: ignore[method-assign]
        ChangeDetector.observe = observe  # type: ignore[method-assign]
    return report, trace


def _share(values: np.ndarray, expert: int, start: int, end: int) -> float | None:
    part = values[start:end]
    return None if len(part) == 0 else float(np.mean(part == expert))


def _diagnose(f: FittedStream, costs: ExpertCosts, options: AdaptOptions) -> dict[str, Any]:
    report, trace = _traced_replay(f, costs, options)
    items, _ = _draw_stream(np.asarray(f.stream.categories), options, np.random.default_rng(options.seed))
    truth = np.nan_to_num(np.asarray(f.stream.scores, dtype=np.float64)[items], nan=0.0)
    category = np.asarray(f.stream_category)[items]
    shocked = list(f.stream.experts).index(report["shock"]["expert"])
    at, window = report["shock"]["at"], options.window
    drop = np.clip(truth[:, shocked] - options.shock, 0.0, 1.0) - truth[:, shocked]  # the diluted shift per item
    true_alarm = next((a for a in report["alarms"] if a["true"]), None)
    alarm = len(items) if true_alarm is None else int(true_alarm["request"])
    recovered = at + int(report["recovery_requests"])
    chosen = np.asarray(trace["served"])
    fb = (
        np.array([(r, e, res, down) for r, e, res, down in trace["feedback"]])
        if trace["feedback"]
        else np.zeros((0, 4))
    )
    request, expert = fb[:, 0].astype(int), fb[:, 1].astype(int)
    mine = expert == shocked
    before, during = mine & (request < at) & (request >= at - window), mine & (request >= at) & (request < alarm)
    after_fb = (request >= alarm) & (request < recovered)
    downs = fb[mine & (request >= at) & (request <= alarm), 3]
    zeros = np.flatnonzero(downs <= 0.0)
    # its traffic's categories before the shock weigh the per-category estimates
    served_before = category[at - window : at][chosen[at - window : at] == shocked]
    weight = np.bincount(served_before, minlength=f.offline.shape[0]).astype(np.float64)
    weight = weight / weight.sum() if weight.sum() > 0 else np.full(len(weight), 1.0 / len(weight))
    true_before = _weighted_truth(truth[:at, shocked], category[:at], weight)
    shocked_truth = np.clip(truth[at:, shocked] - options.shock, 0.0, 1.0)
    true_after = _weighted_truth(shocked_truth, category[at:], weight)
    move = next((m for m in trace.get("alarm_moves", []) if m[1] == shocked and m[0] == alarm), None)
    estimates = trace["estimate"]
    at_recovery = estimates[min(len(estimates) - 1, recovered // 50)][:, shocked] if estimates else None
    return {
        "axis": options.budget_axis, "target": options.target, "seed": options.seed,
        "shocked": report["shock"]["expert"],
        "true_alarm_delay": report["true_alarm_delay"], "recovery_requests": report["recovery_requests"],
        "recovery_after_alarm": None if true_alarm is None else recovered - alarm,
        "false_alarms": report["false_alarms"],
        "traffic_share": {
            "before": _share(chosen, shocked, at - window, at),
            "shock_to_alarm": _share(chosen, shocked, at, alarm),
            "alarm_to_recovery": _share(chosen, shocked, alarm, recovered),
        },
        "feedback_share": {
            "before": float(before.sum() / max(1, ((request < at) & (request >= at - window)).sum())),
            "shock_to_alarm": float(during.sum() / max(1, ((request >= at) & (request < alarm)).sum())),
            "alarm_to_recovery": float((after_fb & mine).sum() / max(1, after_fb.sum())),
        },
        "feedbacks_shock_to_alarm": int(during.sum()),
        "cusum_down_at_shock": float(downs[0]) if len(downs) else None,
        "cusum_down_resets_after_shock": len(zeros),
        "feedbacks_in_last_climb": int(len(downs) - (zeros[-1] if len(zeros) else 0)),
        "mean_residual_before": float(fb[mine & (request < at), 2].mean()) if (mine & (request < at)).any() else None,
        "mean_residual_shock_to_alarm": float(fb[during, 2].mean()) if during.any() else None,
        "residual_sd_shock_to_alarm": float(fb[during, 2].std()) if during.sum() > 1 else None,
        "residual_sd_before": float(fb[mine & (request < at), 2].std()) if (mine & (request < at)).sum() > 1 else None,
        "true_shift_shock_to_alarm": float(drop[request[during]].mean()) if during.any() else None,
        "estimated_shift_at_alarm": None if true_alarm is None else float(true_alarm["shift"]),
        "true_mean_before": true_before, "true_mean_after": true_after,
        "estimate_before_alarm": None if move is None else float(weight @ move[2]),
        "estimate_after_alarm": None if move is None else float(weight @ move[3]),
        "estimate_at_recovery": None if at_recovery is None else float(weight @ at_recovery),
    }  # fmt: skip


def _weighted_truth(scores: np.ndarray, category: np.ndarray, weight: np.ndarray) -> float:
    """The mean of ``scores`` per category, weighed by ``weight`` (categories with no request left out)."""
    means = np.array([scores[category == k].mean() if (category == k).any() else np.nan for k in range(len(weight))])
    known = np.isfinite(means) & (weight > 0)
    return float(weight[known] @ means[known] / weight[known].sum())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jsonl and experts.json")
    parser.add_argument("--json", type=Path, required=True, help="write the per-run diagnosis here")
    args = parser.parse_args(argv)
    costs = load_costs(args.data / "experts.json")
    fitted, sizes = tuning_streams(args.data, costs, STACK_EMBEDDER, CALIBRATION_FOLDS)
    runs = []
    for axis, target in BUDGETS:
        for seed in SEEDS + CONFIRM_SEEDS:
            options = AdaptOptions(budget_axis=axis, target=target, seed=seed)
            runs.append(_diagnose(fitted[axis], costs, options))
            r = runs[-1]
            print(axis, target, seed, r["true_alarm_delay"], r["recovery_after_alarm"], r["feedbacks_shock_to_alarm"],
                  r["mean_residual_shock_to_alarm"], r["true_shift_shock_to_alarm"], flush=True)  # fmt: skip
    payload = {
        "note": "tuning runs on a split of the benchmark's prior half only, at AdaptOptions' defaults; no timing",
        "split": {"salt": TUNING_SALT, **sizes},
        "defaults_drift_threshold": [AdaptOptions().change_drift, AdaptOptions().change_threshold],
        "runs": runs,
    }
    write_data(args.json, payload, "python scripts/adapt_diagnose_s13b.py " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
