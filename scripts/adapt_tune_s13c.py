"""`scripts/adapt_tune.py --stage s13c` (session 13, branch probe13): probing a suspect expert, on the 27 tuning runs.

``docs/data/adapt-diagnosis-s13b.json`` found the true alarm late where the shocked expert's traffic fell at the
shock: its down-side CUSUM climbed on few feedbacks (4.5 per 100 requests against 10.3 for the others). The lever
(``coserve.router.online_probe``): while an expert's down side stands above ``change_probe`` times the alarm
level, requests that allow it and whose choice scores within ``change_probe_margin`` of it in the router's
objective are routed to it, at most ``change_probe_requests`` per suspicion episode. Scored here:

* the probe share x the episode's budget, PROBE_SHARES x PROBE_REQUESTS, at the default margin (0.05);
* the best of those with a narrower margin (0.02) and with any request (margin ANY: within the episode's budget,
  every request that allows the suspect is probed).

Every setting is scored on all 27 runs (the three budgets, seeds 0 to 8), every other knob at AdaptOptions'
defaults, the defaults themselves first in the same run. The rule, fixed before the run (sessions 11 to 13's):
a setting is adopted only where it meets more checks of 108 than the defaults (ties: a narrower mean
adaptive - hindsight) without meeting fewer hindsight or fewer recovery checks (``adapt_tune._keeps_quality``).
Each result carries its alarms' totals (``adapt_tune_s12.alarm_totals``) and the probed requests' share.

Knows nothing about how a setting is replayed: ``s13c_stage`` takes the scoring function.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

from adapt_tune_s12 import with_alarm_totals  # beside this script

__all__ = ["ANY", "PROBE_REQUESTS", "PROBE_SHARES", "probed_scoring", "s13c_stage"]

PROBE_SHARES = (0.25, 0.5)  # change_probe: share of the alarm level above which an expert is suspect
PROBE_REQUESTS = (50, 200)  # change_probe_requests: requests one suspicion episode may probe
MARGINS = (0.02,)  # change_probe_margin, besides the default 0.05, for the best pair
ANY = 1e6  # a margin no objective gap reaches (scores in [0, 1], the cost term bounded by the weight's cap)

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def probed_scoring(score: Callable[[dict[str, Any]], Result]) -> Callable[[dict[str, Any]], Result]:
    """``score``, each result given its ``alarm_totals`` and ``probed_share`` (the mean over its runs)."""

    def scored(knobs: dict[str, Any]) -> Result:
        result = with_alarm_totals(score)(knobs)
        result["probed_share"] = sum(run["probed_share"] for run in result["runs"]) / len(result["runs"])
        print("   probed share", f"{result['probed_share']:.4f}", flush=True)
        return result

    return scored


def s13c_stage(score: Callable[[dict[str, Any]], Result]) -> list[Result]:
    """Score the defaults, the grid of probe shares and budgets, then the best pair's margin variants; every
    result in order, each with its ``alarm_totals`` and ``probed_share`` (the mean over its runs)."""
    scored = probed_scoring(score)
    reference = scored({})  # the defaults first
    grid = [
        scored({"change_probe": share, "change_probe_requests": requests})
        for share in PROBE_SHARES
        for requests in PROBE_REQUESTS
    ]
    best = max(grid, key=_rank)["knobs"]
    margins = [scored({**best, "change_probe_margin": margin}) for margin in (*MARGINS, ANY)]
    return [reference, *grid, *margins]
