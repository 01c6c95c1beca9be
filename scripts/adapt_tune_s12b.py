"""`scripts/adapt_tune.py --stage s12b` (session 12, branch bias12): the change detector's running reference
on the 27 tuning runs.

The residuals the CUSUM reads run below 0 where the router chooses (the winner's curse; before the shock,
-0.005 to -0.048 per expert at the defaults: docs/data/adapt-calibration-s12.json). With
``change_reference: running`` each expert's CUSUM reads its residuals less a slow running mean of its
own (``coserve.router.drift_reference``). Every setting is scored on all 27 runs (the three budgets,
seeds 0 to 8), every other knob at AdaptOptions' defaults, the defaults themselves first (in the same run):

* step 1: the running reference with memory 300 and 1,000 feedbacks, each at the alarm levels and
  drifts of PAIRS (the defaults' (8, 0.075) and, with the bias gone, a lower drift or level: 8 settings);
* step 2: the proportional change model with step 1's best reference memory, at the defaults' pair
  (session 12's proportional model fired more false alarms at level 8; the reference may remove the bias
  behind them: 1 setting).

9 settings. The rule, fixed before the run (sessions 11 and 12's): a setting is adopted only where it meets
more checks of 108 than the defaults (ties: a narrower mean adaptive - hindsight) without meeting fewer
hindsight or fewer recovery checks (``adapt_tune._keeps_quality``). Each result carries its alarms'
totals (``adapt_tune_s12.alarm_totals``: false alarms, false drops, the true alarm's delay per run).

Knows nothing about how a setting is replayed: ``s12b_stage`` takes the scoring function.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

from adapt_tune_s12 import with_alarm_totals  # beside this script

__all__ = ["MEMORIES", "PAIRS", "s12b_stage"]

MEMORIES = (300.0, 1000.0)  # change_reference_memory, in feedbacks
PAIRS = ((8.0, 0.075), (8.0, 0.05), (6.0, 0.075), (10.0, 0.05))  # (change_threshold, change_drift)
RUNNING = {"change_reference": "running"}

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def s12b_stage(score: Callable[[dict[str, Any]], Result]) -> list[Result]:
    """Score the defaults, step 1's grid, then step 2's proportional setting; every result in order, each
    with its ``alarm_totals``."""
    scored = with_alarm_totals(score)
    reference = scored({})  # the defaults first
    grid = [
        scored({**RUNNING, "change_reference_memory": memory, "change_threshold": level, "change_drift": drift})
        for memory in MEMORIES
        for level, drift in PAIRS
    ]
    memory = max(grid, key=_rank)["knobs"]["change_reference_memory"]
    proportional = scored(
        {**RUNNING, "change_reference_memory": memory, "change_model": "proportional", "change_threshold": 8.0,
         "change_drift": 0.075}
    )  # fmt: skip
    return [reference, *grid, proportional]
