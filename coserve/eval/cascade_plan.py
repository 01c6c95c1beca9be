"""Cascade only where it can pay: per routed category, whether the cascade runs and from which expert.

Decided on the check's training sample alone (outcome rows with every expert's score and signals,
the check's out-of-fold probabilities), never on held-out rows. For each category the library's
router assigns (``coserve.router.policy.decide`` on the recorded probabilities):

    single     -> the library's single choice on the category's rows: quality and mean parameters
    candidates -> every expert with fewer parameters than that mean (a step cheaper than single
                  choice), skipped when its own mean score there is below ``min_skill``
    replay     -> the cascade from each candidate (``coserve.eval.cascade.replay`` with that start),
                  at the library's threshold; kept when it is at least as good as single choice at
                  fewer parameters; the best kept one (quality, then fewer parameters) is the start

A category with no kept candidate answers by single choice (not in ``starts``). The result feeds
``routing.cascade.categories`` (scripts/cascade_library.py). This module knows nothing about HTTP
or the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coserve.config import LibraryConfig
from coserve.engine.cascade import params_of
from coserve.eval.cascade import replay
from coserve.router.policy import decide

__all__ = ["plan_starts"]


def plan_starts(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig,
    probability: Mapping[tuple[str, str], float],
    threshold: float,
    max_steps: int,
    min_skill: float = 0.2,
) -> dict[str, Any]:
    """``{"starts": {category: expert}, "categories": {category: the figures behind the choice}}``."""
    params = params_of(library)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        probabilities = (row.get("router") or {}).get("probabilities")
        if probabilities and all(e in row.get("scores", {}) for e in params):
            groups.setdefault(str(decide(probabilities, library).category), []).append(row)
    starts: dict[str, str] = {}
    report: dict[str, Any] = {}
    for category, group in sorted(groups.items()):
        single = replay(group, library, probability, threshold, max_steps, starts={})["single"]
        tried: dict[str, Any] = {}
        for expert in sorted(params, key=lambda e: params[e]):
            if params[expert] >= single["avg_params_b"]:
                continue
            skill = sum(float(r["scores"][expert]) for r in group) / len(group)
            if skill < min_skill:
                tried[expert] = {"skill": round(skill, 4), "kept": False, "why": f"skill below {min_skill:g}"}
                continue
            point = replay(group, library, probability, threshold, max_steps, starts={category: expert})
            cascade = point["cascade"]
            kept = cascade["quality"] >= single["quality"] and cascade["avg_params_b"] < single["avg_params_b"]
            why = "as good at fewer parameters" if kept else "worse, or not cheaper, than single choice"
            tried[expert] = {"skill": round(skill, 4), "cascade": cascade, "steps": point["steps"], "kept": kept}
            tried[expert]["why"] = why
        best = max(
            (e for e, t in tried.items() if t["kept"]),
            key=lambda e: (tried[e]["cascade"]["quality"], -tried[e]["cascade"]["avg_params_b"]),
            default=None,
        )
        if best is not None:
            starts[category] = best
        report[category] = {"items": len(group), "single": single, "candidates": tried, "start": best}
    return {
        "threshold": threshold,
        "max_steps": max_steps,
        "min_skill": min_skill,
        "starts": starts,
        "categories": report,
    }
