"""`scripts/adapt_tune.py --stage s13b` (session 13, branch adapt13b): two faster paths to the true alarm, on the
27 tuning runs.

``scripts/adapt_diagnose_s13b.py`` (docs/data/adapt-diagnosis-s13b.json) found the true alarm late where the
shocked expert's traffic fell at the shock (the mix moved away from it): its CUSUM climbed steadily but on few
feedbacks, each of them worth ``|r| - drift``, ``r`` diluted by the clip at 0 and by what the posterior learnt
meanwhile. After the alarm, recovery waited only on the 500-request window (the alarm's move already took the
expert's share to about 1%). So the levers act on the alarm (``coserve.router.drift_fast``):

* ``change_anchor``: residuals read against the estimate each cell had when the down side left 0;
* ``change_fast_threshold`` > 0: a second, down-only CUSUM with a larger drift and a lower level (a large drop
  on an expert with little feedback), at FAST_PAIRS (drift, level);
* the anchor again at the alarm levels 10 and 12 (it also sharpens false drops: does it detect sooner at the
  defaults' false-alarm count?), and the anchor with the best fast lane (8 settings with the defaults).

Every setting is scored on all 27 runs (the three budgets, seeds 0 to 8), every other knob at AdaptOptions'
defaults, the defaults themselves first in the same run. The rule, fixed before the run (sessions 11 to 13's):
a setting is adopted only where it meets more checks of 108 than the defaults (ties: a narrower mean
adaptive - hindsight) without meeting fewer hindsight or fewer recovery checks (``adapt_tune._keeps_quality``).
Each result carries its alarms' totals (``adapt_tune_s12.alarm_totals``).

Knows nothing about how a setting is replayed: ``s13b_stage`` takes the scoring function.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

from adapt_tune_s12 import with_alarm_totals  # beside this script

__all__ = ["FAST_PAIRS", "s13b_stage"]

FAST_PAIRS = ((0.15, 3.0), (0.15, 2.0), (0.1, 4.0))  # (change_fast_drift, change_fast_threshold)
ANCHOR = {"change_anchor": True}
ANCHOR_LEVELS = (None, 10.0, 12.0)  # change_threshold with the anchor (None: the defaults' 8)

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def s13b_stage(score: Callable[[dict[str, Any]], Result]) -> list[Result]:
    """Score the defaults, the anchor (at the defaults' level, 10 and 12), each fast lane, then the anchor with the
    best fast lane; every result in order, each with its ``alarm_totals``."""
    scored = with_alarm_totals(score)
    reference = scored({})  # the defaults first
    anchored = [scored({**ANCHOR, **({"change_threshold": level} if level else {})}) for level in ANCHOR_LEVELS]
    fast = [scored({"change_fast_drift": drift, "change_fast_threshold": level}) for drift, level in FAST_PAIRS]
    both = scored({**ANCHOR, **max(fast, key=_rank)["knobs"]})
    return [reference, *anchored, *fast, both]
