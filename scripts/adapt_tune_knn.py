"""`scripts/adapt_tune.py --stage knn` (session 11, branch knn11): the neighbour correction on the 27 tuning runs.

In prompt mode a request's estimate is its offline per-prompt prediction plus its category's learnt
correction; `router.online.neighbours` adds the shrunk mean residual of feedback on its nearest earlier
prompts (`coserve.router.online_neighbours`). Every setting is scored on all 27 runs (the three budgets,
seeds 0 to 8), every other knob at AdaptOptions' defaults, the defaults themselves first (the reference,
in the same run: session 11's, `weight_floor` 0.005, 88 of 108 in `--stage s11`). Six neighbour settings,
fixed before the run (k, memory, shrink, similarity floor), then the best of them (checks, then the
mean gap) again with remembered prompts of the very same vector left out (`skip_identical`): the replay
draws items with replacement (about 9 draws of each tuning-stream prompt in 12,000 requests), so this
tells learning from similar prompts apart from learning an exact prompt's repeats. The adoption rule,
fixed before the run: adopt only a setting that meets more checks of 108 than the defaults (ties: a
narrower mean adaptive - hindsight) without meeting fewer hindsight or fewer recovery checks
(`_keeps_quality`); the `skip_identical` row is a measurement, never adopted.

Knows nothing about how a setting is replayed: ``knn_stage`` takes the scoring function.
"""

from __future__ import annotations

# first, before numpy: OpenBLAS reads the pinned kernel once, at load (coserve.bench.pinned)
import coserve.bench.pinned  # noqa: F401

# isort: split

from collections.abc import Callable
from typing import Any

__all__ = ["NEIGHBOUR_SETTINGS", "knn_stage"]

NEIGHBOUR_SETTINGS: tuple[dict[str, Any], ...] = (
    {"k": 20, "memory": 2000, "shrink": 5.0, "min_similarity": 0.7},
    {"k": 20, "memory": 2000, "shrink": 5.0, "min_similarity": 0.8},
    {"k": 20, "memory": 2000, "shrink": 10.0, "min_similarity": 0.7},
    {"k": 50, "memory": 2000, "shrink": 10.0, "min_similarity": 0.7},
    {"k": 10, "memory": 2000, "shrink": 2.0, "min_similarity": 0.8},
    {"k": 20, "memory": 500, "shrink": 5.0, "min_similarity": 0.7},
)

Result = dict[str, Any]


def _rank(result: Result) -> tuple[int, float]:
    return result["checks_met"], result["mean_adaptive_minus_hindsight"]


def knn_stage(score: Callable[[dict[str, Any]], Result]) -> tuple[list[Result], Result]:
    """The defaults, each neighbour setting, in order; and the best setting with identical prompts left out."""
    reference = score({})  # the defaults first
    settings = [score({"neighbours": dict(neighbours)}) for neighbours in NEIGHBOUR_SETTINGS]
    best = max(settings, key=_rank)["knobs"]["neighbours"]
    similar_only = score({"neighbours": {**best, "skip_identical": True}})
    return [reference, *settings], similar_only
