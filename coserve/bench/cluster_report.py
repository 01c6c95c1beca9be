"""What ``coserve bench cluster`` computes from plain numbers: each simulated node's memory budget (and
the unbounded contender's), how many experts a peer replica may hold, the medians of the runs, each
expert's service times, the fault run's outcome counts and the targets (met or MISSED, and the
ceiling: whether 1.5x the peer is reachable at all).

Pure: no Ray, no HTTP, no clock; coserve.bench.cluster runs the cluster and hands the numbers here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from coserve.bench.spread import spread

__all__ = [
    "BUDGET_HEADROOM",
    "BUDGET_RULE",
    "FIGURES",
    "UNBOUNDED_RULE",
    "fault_counts",
    "median_by_key",
    "models_per_replica",
    "node_budget",
    "service_times",
    "summarise_policy",
    "targets",
    "unbounded_budget",
]

MiB = 2**20
BUDGET_HEADROOM = 1.05
BUDGET_RULE = "each node: the largest expert's loaded footprint x 1.05, rounded up to a MiB (the largest fits alone)"
UNBOUNDED_RULE = "each node: every expert's loaded footprint summed x 1.05, rounded up to a MiB (all fit at once)"
FIGURES = ("throughput_rps", "p50_s", "p95_s", "loads", "lost")  # per run; the policy's figure is the median


def node_budget(footprints: Mapping[str, int]) -> int:
    """Bytes of memory each simulated node offers (``BUDGET_RULE``)."""
    if not footprints:
        raise ValueError("no expert to place")
    return math.ceil(max(footprints.values()) * BUDGET_HEADROOM / MiB) * MiB


def unbounded_budget(footprints: Mapping[str, int]) -> int:
    """Bytes of memory each node offers the unbounded contender (``UNBOUNDED_RULE``)."""
    if not footprints:
        raise ValueError("no expert to place")
    return math.ceil(sum(footprints.values()) * BUDGET_HEADROOM / MiB) * MiB


def models_per_replica(budget: int, footprints: Mapping[str, int]) -> int:
    """How many experts a peer replica may keep loaded on such a node: as many as fit whichever they
    are (Ray's limit is a count, not bytes), so the budget over the largest footprint, at least 1."""
    return max(1, budget // max(footprints.values()))


def summarise_policy(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One policy's figures: the median of its runs for each of ``FIGURES`` (``lost``: the sum over
    runs, so no loss hides in a median), their min and max, and the runs themselves."""
    done = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": [dict(r) for r in runs], "failed_runs": len(runs) - len(done)}
    if not done:
        return {**out, **dict.fromkeys(FIGURES)}
    spreads = {f: spread([float(r[f]) for r in done]) for f in FIGURES}
    for figure, values in spreads.items():
        out[figure] = values["median"]
    out["lost"] = int(sum(int(r["lost"]) for r in done))
    out["min"] = {f: s["min"] for f, s in spreads.items()}
    out["max"] = {f: s["max"] for f, s in spreads.items()}
    return out


def median_by_key(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key, the median over the rows that have it (the median run's CPU seconds of each process
    role), largest first."""
    keys = {k for row in rows for k in row}
    medians = {k: statistics.median([row[k] for row in rows if k in row]) for k in keys}
    return dict(sorted(medians.items(), key=lambda kv: (-kv[1], kv[0])))


def service_times(requests: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per expert that answered, over its requests that ended well (coserve.bench.replay's records):
    ``count``, the median and the least time to first token (``ttft_s``: routing, queueing behind
    other requests, any load, the prefill; the least is the closest to no queueing), the median
    seconds from the first token to the last (``decode_s``) and per token after the first."""
    by_expert: dict[str, list[Mapping[str, Any]]] = {}
    for request in requests:
        if request.get("outcome") == "ok" and not math.isnan(request["ttft_s"]):
            by_expert.setdefault(str(request["answered_by"] or request["expert"]), []).append(request)
    out = {}
    for expert, done in sorted(by_expert.items()):
        ttfts = [float(r["ttft_s"]) for r in done]
        decodes = [float(r["latency_s"]) - float(r["ttft_s"]) for r in done]
        per_token = [d / (int(r["completion_tokens"]) - 1) for d, r in zip(decodes, done, strict=True)
                     if int(r["completion_tokens"]) > 1]  # fmt: skip
        out[expert] = {
            "count": len(done),
            "ttft_s": round(statistics.median(ttfts), 3),
            "ttft_min_s": round(min(ttfts), 3),
            "decode_s": round(statistics.median(decodes), 3),
            "decode_s_per_token": round(statistics.median(per_token), 4) if per_token else math.nan,
        }
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
    coserve: Mapping[str, Any],
    peer: Mapping[str, Any],
    fault: Mapping[str, Any],
    placement: Mapping[str, Any],
    unbounded: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The benchmark's targets against the medians: coserve's loads at most half the peer's, its
    throughput at least 1.5x the peer's, no request lost when a node dies, every node within budget.
    A figure that is missing (a failed policy, a skipped fault run) is a MISSED target. With the
    unbounded contender, ``ceiling_vs_peer`` (informational): its throughput over the peer's, and
    whether that reaches 1.5 at all (if not, no placement or replica choice can meet the target)."""
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
    if unbounded is not None:
        rows["ceiling_vs_peer"] = _ceiling(unbounded.get("throughput_rps"), peer.get("throughput_rps"))
    within = len(placement) - len(over)
    rows["within_budget"] = _row(within, f"all {len(placement)} nodes", not over and bool(placement))
    if over:
        rows["within_budget"]["over"] = sorted(over)
    return rows


def _ceiling(ceiling: float | None, peer: float | None) -> dict[str, Any]:
    value = ceiling / peer if ceiling is not None and peer else None
    reachable = value is not None and value >= 1.5
    return {
        "value": value,
        "want": "informational (unbounded / peer): >= 1.5 means the 1.5x target is reachable on this workload",
        "met": reachable,
        "verdict": "1.5x reachable" if reachable else "1.5x NOT reachable with this compute",
        "informational": True,
    }
