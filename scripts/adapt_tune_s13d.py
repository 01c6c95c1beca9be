"""`scripts/adapt_tune.py --stage s13d` (session 13, branch probe13b): the probe restricted to starved suspects.

``--stage s13c`` (branch probe13) brought the late true alarms forward by probing a suspect expert, but most probes
went to busy experts suspect by noise, whose own traffic already brings the detector evidence, and cost 4 to 6
hindsight checks. ``change_probe_starved`` (``coserve.router.online_probe``) probes a suspect only while its share
of the last 500 routed requests stands below that ratio of its share of the last 5,000. Scored here:

* the ratio x the probe share and episode budget: STARVED x PROBES, at the default margin (0.05);
* the best of those with a looser ratio (LOOSER) and with a larger episode budget (LARGER_BUDGET).

Every setting is scored on all 27 runs (the three budgets, seeds 0 to 8), every other knob at AdaptOptions'
defaults, the defaults themselves first in the same run. The rule, fixed before the run (sessions 11 to 13's):
a setting is adopted only where it meets more checks of 108 than the defaults (ties: a narrower mean
adaptive - hindsight) without meeting fewer hindsight or fewer recovery checks (``adapt_tune._keeps_quality``).
Each result carries its alarms' totals (``adapt_tune_s12.alarm_totals``) and the probed requests' share.

Knows nothing about how a setting is replayed: ``s13d_stage`` takes the scoring function.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

from adapt_tune_s13c import probed_scoring  # beside this script

__all__ = ["LARGER_BUDGET", "LOOSER", "PROBES", "STARVED", "s13d_stage"]

STARVED = (0.5, 0.7)  # change_probe_starved: short- to long-run traffic share ratio below which a suspect is probed
PROBES = ((0.25, 200), (0.5, 200))  # (change_probe, change_probe_requests): s13c's two best pairs
LOOSER = 0.85  # a ratio closer to 1, for the best of the grid
LARGER_BUDGET = 400  # change_probe_requests, for the best of the grid

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def s13d_stage(score: Callable[[dict[str, Any]], Result]) -> list[Result]:
    """Score the defaults, the grid of ratios and probe pairs, then the best's looser ratio and larger budget; every
    result in order, each with its ``alarm_totals`` and ``probed_share`` (the mean over its runs)."""
    scored = probed_scoring(score)
    reference = scored({})  # the defaults first
    grid = [
        scored({"change_probe": share, "change_probe_requests": requests, "change_probe_starved": starved})
        for starved in STARVED
        for share, requests in PROBES
    ]
    best = max(grid, key=_rank)["knobs"]
    variants = [
        scored({**best, "change_probe_starved": LOOSER}),
        scored({**best, "change_probe_requests": LARGER_BUDGET}),
    ]
    return [reference, *grid, *variants]
