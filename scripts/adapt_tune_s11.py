"""`scripts/adapt_tune.py --stage s11` (session 11): the levers session 10 left, on the 27 tuning runs.

Every setting is scored on all 27 runs (the three budgets, seeds 0 to 8), every other knob at
AdaptOptions' defaults, the defaults themselves first (the reference, in the same run):

* a two-sided target (`weight_floor` 0.005 / 0.01 / 0.02): the cost weight may go below 0, so where
  weight 0 underspends, dearer experts within |w| cost / target of the best are bought;
* exploration at weight <= 0 limited to an expert a downward alarm moved, for 500 or 2,000 routed
  requests after the alarm (`alarm_explore`);
* a smaller move of the means at an alarm (`change_shift_share` 0.5 / 0.25 of the estimated shift);

then four combinations of each lever's best single setting (checks, then the mean gap): the best floor
with an underspend debt of 25, the best alarm exploration with that debt, the best floor with the best
exploration, and those two with the best shift share. 12 settings. The rule, fixed before the run: a
setting is adopted only where it meets more checks of 108 than the defaults (ties: a narrower mean
adaptive - hindsight) without meeting fewer hindsight or fewer recovery checks (`_keeps_quality`).

Knows nothing about how a setting is replayed: ``s11_stage`` takes the scoring function.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

__all__ = ["FLOORS", "s11_stage"]

FLOORS = (0.005, 0.01, 0.02)  # weight_floor: the cost weight's floor is minus this
ALARM_EXPLORES = (500, 2000)  # alarm_explore: routed requests after a downward alarm
SHIFT_SHARES = (0.5, 0.25)  # change_shift_share: share of the estimated shift an alarm moves means by
DEBT = 25.0  # underspend_debt in the combinations (session 10's middle value)

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def s11_stage(score: Callable[[dict[str, Any]], Result]) -> list[Result]:
    """Score the defaults, the single settings, then the combinations; every result in order."""
    reference = score({})  # the defaults first
    floors = [score({"weight_floor": floor}) for floor in FLOORS]
    explores = [score({"alarm_explore": n}) for n in ALARM_EXPLORES]
    shares = [score({"change_shift_share": share}) for share in SHIFT_SHARES]
    floor, explore, share = (max(group, key=_rank)["knobs"] for group in (floors, explores, shares))
    combined = [
        score({**floor, "underspend_debt": DEBT}),
        score({**explore, "underspend_debt": DEBT}),
        score({**floor, **explore}),
        score({**floor, **explore, **share}),
    ]
    return [reference, *floors, *explores, *shares, *combined]
