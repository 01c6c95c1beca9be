"""What ``coserve bench cluster`` computes from plain numbers: each simulated node's memory budget, how
many experts a peer replica may hold, the medians of the runs, the fault run's outcome counts and
the targets (met or MISSED).

Pure: no Ray, no HTTP, no clock; coserve.bench.cluster runs the cluster and hands the numbers here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BUDGET_HEADROOM",
    "BUDGET_RULE",
    "FIGURES",
    "fault_counts",
    "models_per_replica",
    "node_budget",
    "summarise_policy",
    "targets",
]

MiB = 2**20
BUDGET_HEADROOM = 1.05
BUDGET_RULE = "each node: the largest expert's loaded footprint x 1.05, rounded up to a MiB (the largest fits alone)"
FIGURES = ("throughput_rps", "p50_s", "p95_s", "loads", "lost")  # per run; the policy's figure is the median


def node_budget(footprints: Mapping[str, int]) -> int:
    """Bytes of memory each simulated node offers (``BUDGET_RULE``)."""
    if not footprints:
        raise ValueError("no expert to place")
    return math.ceil(max(footprints.values()) * BUDGET_HEADROOM / MiB) * MiB


def models_per_replica(budget: int, footprints: Mapping[str, int]) -> int:
    """How many experts a peer replica may keep loaded on such a node: as many as fit whichever they
    are (Ray's limit is a count, not bytes), so the budget over the largest footprint, at least 1."""
    return max(1, budget // max(footprints.values()))


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise_policy(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One policy's figures: the median of its runs for each of ``FIGURES`` (``lost``: the sum over
    runs, so no loss hides in a median), their min and max, and the runs themselves."""
    done = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": [dict(r) for r in runs], "failed_runs": len(runs) - len(done)}
    if not done:
        return {**out, **dict.fromkeys(FIGURES)}
    spreads = {f: _spread([float(r[f]) for r in done]) for f in FIGURES}
    for figure, spread in spreads.items():
        out[figure] = spread["median"]
    out["lost"] = int(sum(int(r["lost"]) for r in done))
    out["min"] = {f: s["min"] for f, s in spreads.items()}
    out["max"] = {f: s["max"] for f, s in spreads.items()}
    return out


def fault_counts(outcomes: Sequence[str]) -> dict[str, int]:
    """``sent``, ``ok``, ``clean_errors``, ``lost`` of the fault run's per-request outcomes
    (coserve.bench.replay.outcome_of: "ok", "clean_error", "lost: ...")."""
    return {
        "sent": len(outcomes),
        "ok": sum(o == "ok" for o in outcomes),
        "clean_errors": sum(o == "clean_error" for o in outcomes),
        "lost": sum(o.startswith("lost") for o in outcomes),
    }


def _row(value: float | None, want: str, met: bool) -> dict[str, Any]:
    return {"value": value, "want": want, "met": met, "verdict": "met" if met else "MISSED"}


def targets(
    coserve: Mapping[str, Any], peer: Mapping[str, Any], fault: Mapping[str, Any], placement: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The benchmark's targets against the medians: coserve's loads at most half the peer's, its
    throughput at least 1.5x the peer's, no request lost when a node dies, every node within budget.
    A figure that is missing (a failed policy, a skipped fault run) is a MISSED target."""
    rows: dict[str, dict[str, Any]] = {}
    ours, theirs = coserve.get("loads"), peer.get("loads")
    if ours is None or theirs is None:
        rows["loads_vs_peer"] = _row(None, "<= 0.5 (coserve / peer)", False)
    else:
        rows["loads_vs_peer"] = _row(ours / theirs if theirs else None, "<= 0.5 (coserve / peer)", ours <= 0.5 * theirs)
    ours, theirs = coserve.get("throughput_rps"), peer.get("throughput_rps")
    if ours is None or not theirs:
        rows["throughput_vs_peer"] = _row(None, ">= 1.5 (coserve / peer)", False)
    else:
        rows["throughput_vs_peer"] = _row(ours / theirs, ">= 1.5 (coserve / peer)", ours >= 1.5 * theirs)
    lost = fault.get("lost")
    rows["fault_lost"] = _row(lost, "== 0", lost == 0 and "sent" in fault and int(fault["sent"]) > 0)
    over = [
        node
        for node, row in placement.items()
        if row["bytes"] > row["budget_bytes"] or any(v > row["budget_bytes"] for v in row.get("measured", {}).values())
    ]
    within = len(placement) - len(over)
    rows["within_budget"] = _row(within, f"all {len(placement)} nodes", not over and bool(placement))
    if over:
        rows["within_budget"]["over"] = sorted(over)
    return rows
