"""`scripts/adapt_tune.py --stage s13` (session 13, branch calib13): the change detector's residuals read less
per-cell offsets cross-fitted on the tuning prior, on the 27 tuning runs.

Where the router chooses, the per-prompt estimate runs high (the winner's curse), locally (per category and
prompt region: session 12, branch bias12). ``change_calibration`` (``coserve.router.drift_calibration``) learns
each (category, expert) cell's bias out of fold on the PRIOR outcomes only, so the live stream cannot absorb a
real change, and the CUSUM reads ``r - offset`` (``cell``) or ``r - u offset``, ``u`` the prior's share left in
the cell (``fading``). Every setting is scored on all 27 runs (the three budgets, seeds 0 to 8), every other
knob at AdaptOptions' defaults, session 12's defaults (``change_calibration`` none, the default before this
stage) first, in the same run:

* step 1: ``cell`` and ``fading``, each with shrink 20 and 100 pseudo-counts, at the defaults' (level,
  drift) (8, 0.075): 4 settings;
* step 2: step 1's best at (8, 0.05), (6, 0.075) and (10, 0.05) (with the bias removed, a lower drift or
  level might detect sooner at the same false-alarm count): 3 settings;
* a measurement, not a setting: step 1's best shrink with the offsets moved into the ROUTING scores (each
  stream prompt's predictions plus its category's offsets, so the cells, the detector and the choices all
  read the calibrated estimate; ``change_calibration`` none, since the estimate then holds the offset).

This stage chose ``fading`` with shrink 20 (89 of 108 against 88), now the default: session 12's defaults
are pinned here (``SESSION_12``), so the command gives its file again at any later commit.

The rule, fixed before the run (sessions 11 and 12's): a setting is adopted only where it meets more checks of
108 than the defaults (ties: a narrower mean adaptive - hindsight) without meeting fewer hindsight or fewer
recovery checks (``adapt_tune._keeps_quality``). Each result carries its alarms' totals. Also reported:
each expert's mean residual, as the detector reads it, over the feedback before the shock, at the defaults
and at each step-1 setting (is the bias gone?).

Knows nothing about the checks themselves: ``adapt_tune`` scores.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

import numpy as np
from adapt_tune import BUDGETS, CONFIRM_SEEDS, SEEDS, run_record, summarise  # beside this script
from adapt_tune_s12 import alarm_totals, with_alarm_totals  # beside this script

from coserve.bench.adapt import AdaptOptions, FittedStream, prior_calibration, replay_adapt
from coserve.eval.data import ExpertCosts
from coserve.router.drift import ChangeDetector
from coserve.router.online import OnlineRouter

__all__ = ["PAIRS", "SHRINKS", "s13_stage"]

CALIBRATIONS = ("cell", "fading")
SHRINKS = (20.0, 100.0)  # change_calibration_shrink, pseudo-counts
PAIRS = ((8.0, 0.05), (6.0, 0.075), (10.0, 0.05))  # step 2: (change_threshold, change_drift)
SESSION_12 = {"change_calibration": "none"}  # the defaults before this stage: the reference

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def _replays(
    fitted: dict[str, FittedStream], costs: ExpertCosts, knobs: dict[str, Any], routed: float | None = None
) -> list[dict[str, Any]]:
    """Every report of the 27 runs with ``knobs``; ``routed`` (a shrink): the offsets in the routing scores."""
    reports = []
    for axis, target in BUDGETS:
        f = fitted[axis]
        predicted = f.predicted
        if routed is not None and f.prior_fit is not None:
            aligned = costs.aligned(f.stream.experts)
            cost = aligned.params_b if axis == "params" else aligned.price
            base = AdaptOptions(budget_axis=axis, target=target, change_calibration_shrink=routed)
            offsets = prior_calibration(f.prior_fit, cost, base, len(f.categories)).offset  # prediction units
            predicted = np.clip(f.predicted + offsets[f.stream_category], 0.0, 1.0)
        for seed in SEEDS + CONFIRM_SEEDS:
            options = AdaptOptions(budget_axis=axis, target=target, seed=seed, **knobs)
            report = replay_adapt(
                f.offline, f.stream, f.stream_category, costs, options, predicted, f.vectors, f.prior_fit
            )
            reports.append(report)
    return reports


def _in_routing(fitted: dict[str, FittedStream], costs: ExpertCosts, shrink: float) -> Result:
    """The measurement: the offsets in the routing scores (the defaults otherwise)."""
    reports = _replays(fitted, costs, SESSION_12, routed=shrink)
    budgets = [(axis, target) for axis, target in BUDGETS for _ in SEEDS + CONFIRM_SEEDS]
    seeds = [seed for _ in BUDGETS for seed in SEEDS + CONFIRM_SEEDS]
    runs = [run_record(r, axis, target, seed) for r, (axis, target), seed in zip(reports, budgets, seeds, strict=True)]
    result = summarise({"offsets_in_routing": True, "change_calibration_shrink": shrink}, runs)
    result["alarm_totals"] = alarm_totals(result)
    print(result["checks_met"], result["met_by_check"], f"{_rank(result)[1]:+.4f}", result["knobs"], flush=True)
    return result


def _residuals_before_shock(fitted: dict[str, FittedStream], costs: ExpertCosts, knobs: dict[str, Any]) -> Result:
    """Per expert, the feedbacks before the shock and the mean residual the detector read on them."""
    records: list[tuple[int, int, float]] = []
    served = [0]
    observe, feedback = ChangeDetector.observe, OnlineRouter.feedback

    def observing(self: ChangeDetector, expert: int, residual: float, estimate: float = 1.0) -> float | None:
        records.append((served[0], expert, residual))
        return observe(self, expert, residual, estimate)

    def fed_back(self: OnlineRouter, *args: Any, **kwargs: Any) -> None:
        served[0] = self._served
        feedback(self, *args, **kwargs)

    per_expert: dict[str, list[float]] = {}
    ChangeDetector.observe = observing  # type: ignore[method-assign]
    OnlineRouter.feedback = fed_back  # type: ignore[method-assign]
    try:
        for report in _replays(fitted, costs, knobs):
            names = report["experts"]
            for at, expert, residual in records:
                if at - 1 < report["shock"]["at"]:
                    per_expert.setdefault(names[expert], []).append(residual)
            records.clear()
    finally:
        ChangeDetector.observe = observe  # type: ignore[method-assign]
        OnlineRouter.feedback = feedback  # type: ignore[method-assign]
    rows = {name: {"feedbacks": len(r), "mean_residual": float(np.mean(r))} for name, r in sorted(per_expert.items())}
    pooled = [value for r in per_expert.values() for value in r]
    return {"knobs": knobs, "per_expert": rows, "pooled_mean_residual": float(np.mean(pooled))}


def s13_stage(
    score: Callable[[dict[str, Any]], Result], fitted: dict[str, FittedStream], costs: ExpertCosts
) -> tuple[list[Result], dict[str, Any]]:
    """Score the defaults, step 1, step 2; then the routing measurement and the residuals before the shock.
    Every scored result in order (each with its ``alarm_totals``), and the extra figures."""
    scored = with_alarm_totals(score)
    reference = scored(SESSION_12)  # the defaults before this stage first
    step1 = [
        scored({"change_calibration": mode, "change_calibration_shrink": shrink})
        for mode in CALIBRATIONS
        for shrink in SHRINKS
    ]
    best = max(step1, key=_rank)["knobs"]
    step2 = [scored({**best, "change_threshold": level, "change_drift": drift}) for level, drift in PAIRS]
    routing = _in_routing(fitted, costs, best["change_calibration_shrink"])
    residuals = [_residuals_before_shock(fitted, costs, k) for k in [SESSION_12, *(r["knobs"] for r in step1)]]
    for row in residuals:
        print("before the shock", row["knobs"], f"{row['pooled_mean_residual']:+.4f}", flush=True)
    return [reference, *step1, *step2], {"offsets_in_routing": routing, "residuals_before_shock": residuals}
