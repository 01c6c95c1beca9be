"""`scripts/adapt_tune.py --stage s12` (session 12): the proportional change model on the 27 tuning runs.

Every setting is scored on all 27 runs (the three budgets, seeds 0 to 8), every other knob at
AdaptOptions' defaults, the defaults themselves first (the flat CUSUM, the reference, in the same run):

* step 1, the proportional model with a constant variance (each feedback's increment
  ``e (-r) - drift e^2``): its statistic's scale is not the flat one's, so the alarm level is chosen
  again, over THRESHOLDS x DRIFTS (10 settings);
* step 2, the increment divided by the score's variance, at least a floor (``change_variance_floor``),
  at step 1's best drift: the floor 0.05 at step 1's best level, 1.5 and 2 times it (the division
  makes the statistic larger), and the floor 0.1 at 1.5 times it (4 settings).

14 settings. The rule, fixed before the run (session 11's): a setting is adopted only where it meets
more checks of 108 than the defaults (ties: a narrower mean adaptive - hindsight) without meeting fewer
hindsight or fewer recovery checks (``adapt_tune._keeps_quality``). Each result carries its alarms'
totals (``alarm_totals``): false alarms (any alarm but a drop of the shocked expert after the shock),
false drops among them, and the delay of the first true alarm per run.

Knows nothing about how a setting is replayed: ``s12_stage`` takes the scoring function.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["THRESHOLDS", "alarm_totals", "s12_stage", "with_alarm_totals"]

THRESHOLDS = (4.0, 5.0, 6.0, 8.0, 10.0)  # change_threshold for the proportional model
DRIFTS = (0.05, 0.075)  # change_drift: half the design drop (rho = 2 drift)
PROPORTIONAL = {"change_model": "proportional"}

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def alarm_totals(result: Result) -> dict[str, Any]:
    """Over a result's runs: false alarms, false drops, the true alarm's delay (median, mean, per run)
    and the runs without a true alarm."""
    runs = result["runs"]
    delays = [r["true_alarm_delay"] for r in runs if r["true_alarm_delay"] is not None]
    return {
        "false_alarms": int(sum(r["false_alarms"] for r in runs)),
        "false_drops": int(sum(r["false_drops"] for r in runs)),
        "runs_with_a_false_drop": int(sum(r["false_drops"] > 0 for r in runs)),
        "true_alarm_missed": len(runs) - len(delays),
        "true_alarm_delay_median": float(np.median(delays)) if delays else None,
        "true_alarm_delay_mean": float(np.mean(delays)) if delays else None,
        "true_alarm_delays": [r["true_alarm_delay"] for r in runs],
    }


def with_alarm_totals(score: Callable[[dict[str, Any]], Result]) -> Callable[[dict[str, Any]], Result]:
    """``score``, each result given its ``alarm_totals`` (printed as it comes)."""

    def scored(knobs: dict[str, Any]) -> Result:
        result = score(knobs)
        result["alarm_totals"] = alarm_totals(result)
        totals = result["alarm_totals"]
        print(
            "   false", totals["false_alarms"], "drops", totals["false_drops"], "missed", totals["true_alarm_missed"],
            "delay median", totals["true_alarm_delay_median"], flush=True,
        )  # fmt: skip
        return result

    return scored


def s12_stage(score: Callable[[dict[str, Any]], Result]) -> list[Result]:
    """Score the defaults, step 1's grid, then step 2's variance settings; every result in order, each
    with its ``alarm_totals``."""
    scored = with_alarm_totals(score)
    reference = scored({})  # the defaults first
    grid = [
        scored({**PROPORTIONAL, "change_drift": drift, "change_threshold": level})
        for drift in DRIFTS
        for level in THRESHOLDS
    ]
    best = max(grid, key=_rank)["knobs"]
    level = best["change_threshold"]
    variance = [
        scored({**best, "change_threshold": level * factor, "change_variance_floor": floor})
        for floor, factor in ((0.05, 1.0), (0.05, 1.5), (0.05, 2.0), (0.1, 1.5))
    ]
    return [reference, *grid, *variance]
