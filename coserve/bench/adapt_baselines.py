"""The baselines and measures of ``coserve bench adapt``: the best randomised fixed map at a given average
cost (``lagrangian_mix``, used for the static and hindsight baselines), per-category means, the
recovery count after the shock, which change alarms were true (``alarm_report``), whether a false drop's
expert got its traffic back (``regained``) and the figures per window (``per_window``). Pure numbers;
knows nothing about routers, files or options.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from coserve.router.online import solve_weighted

__all__ = [
    "alarm_report", "category_means", "lagrangian_mix", "mix_of", "mix_weights", "per_window", "recovery", "regained",
    "share_of",
]  # fmt: skip


def lagrangian_mix(
    chooser: np.ndarray, truth: np.ndarray, p: np.ndarray, cost: np.ndarray, spend: float
) -> dict[str, Any]:
    """The maps maximising ``chooser - w * cost`` either side of average cost ``spend`` and their mix.

    ``truth`` [K, E] scores the maps, ``p`` [K] weighs the categories. Returns the mixing share of
    the dearer map, the expected quality and cost of the mix, and both maps. Spending more than the
    weight-0 map is impossible (that map is returned alone); less than the cheapest, likewise.
    """
    p = np.asarray(p, dtype=np.float64) / np.sum(p)

    def at(weight: float) -> tuple[np.ndarray, float, float]:
        assignment = solve_weighted(chooser, cost, weight)
        rows = np.arange(len(p))
        return assignment, float(p @ truth[rows, assignment]), float(p @ cost[assignment])

    rich = at(0.0)
    high_weight = 1.0
    while at(high_weight)[2] > spend and high_weight < 1e9:
        high_weight *= 2
    poor = at(high_weight)
    if rich[2] <= spend or poor[2] >= spend:
        best = rich if rich[2] <= spend else poor
        return {"share_dearer": 1.0, "quality": best[1], "cost": best[2], "maps": [best[0].tolist()]}
    low, high = 0.0, high_weight  # cost(low) > spend >= cost(high)
    for _ in range(60):
        middle = 0.5 * (low + high)
        if at(middle)[2] > spend:
            low = middle
        else:
            high = middle
    dear, cheap = at(low), at(high)
    share = (spend - cheap[2]) / (dear[2] - cheap[2]) if dear[2] > cheap[2] else 0.0
    return {
        "share_dearer": share,
        "quality": share * dear[1] + (1 - share) * cheap[1],
        "cost": share * dear[2] + (1 - share) * cheap[2],
        "maps": [dear[0].tolist(), cheap[0].tolist()],
    }


def share_of(mix: dict[str, Any], category: np.ndarray, expert: int) -> float:
    """Share of ``category``'s requests that ``lagrangian_mix``'s randomised map sends to ``expert``."""
    pairs = zip(mix_weights(mix), mix["maps"], strict=True)
    return float(sum(w * np.mean(np.asarray(m)[category] == expert) for w, m in pairs))


def mix_weights(mix: dict[str, Any]) -> list[float]:
    return [mix["share_dearer"], 1 - mix["share_dearer"]][: len(mix["maps"])]


def mix_of(category: np.ndarray, K: int) -> np.ndarray:
    return np.bincount(category, minlength=K).astype(np.float64) + 1e-12


def category_means(truth: np.ndarray, category: np.ndarray, K: int) -> np.ndarray:
    """Mean true score of each expert over the requests of each category ``[K, E]`` (0.5 where none)."""
    out = np.full((K, truth.shape[1]), 0.5)
    for k in range(K):
        rows = category == k
        if rows.any():
            out[k] = truth[rows].mean(axis=0)
    return out


def recovery(chosen: np.ndarray, shocked: int, shock_at: int, window: int, floor: int = 100) -> int:
    """Requests after the shock until the shocked expert's share, over the post-shock requests of the
    last ``window`` (at least ``floor`` of them), falls below 10% of its share in the ``window``
    requests before the shock; the rest of the run where it never does. Where that share was 0 (the router
    had already stopped sending it anything), a share cannot fall below 0: the expert counts as moved away
    once the post-shock window holds none of its requests (``floor`` at the earliest)."""
    before = float(np.mean(chosen[max(0, shock_at - window) : shock_at] == shocked))
    hits = np.cumsum(chosen[shock_at:] == shocked)
    for t in range(floor, len(hits) + 1):
        span = min(t, window)
        recent = hits[t - 1] - (hits[t - 1 - span] if t > span else 0)
        if recent / span < 0.1 * before or (before == 0 and recent == 0):
            return t
    return len(hits)


def best_map_keeps(share_before: float, best_share_after: float) -> bool:
    """Whether ``recovery``'s criterion (a share below 10% of ``share_before``) asks the router to drop an
    expert that the best fixed map for the post-shock scores still gives at least that share: a recovery
    miss no router that keeps routing it where it is still best can avoid."""
    return share_before > 0 and best_share_after >= 0.1 * share_before


def alarm_report(log: Iterable[dict[str, Any]], experts: list[str], shocked: int, shock_at: int) -> dict[str, Any]:
    """Every alarm of the replay's change detector (``OnlineRouter.alarm_log``: served requests, expert,
    signed shift), with the request it came on (0-based), the expert's name, its side, and whether it is
    true: a drop of the shocked expert after the shock. ``false_alarms`` counts the others (any side),
    ``false_drops`` the downward ones among them, and ``true_alarm_delay`` is the requests from the shock
    to the first true alarm (None: none came). With ``change_confirm`` each downward alarm also says how its
    confirmation ended (``confirm``: open, confirmed, reverted or expired; ``online_confirm``)."""
    alarms: list[dict[str, Any]] = []
    for entry in log:
        request, expert, shift = int(entry["served"]) - 1, int(entry["expert"]), float(entry["shift"])
        true = expert == shocked and request >= shock_at and shift < 0
        side = "down" if shift < 0 else "up"
        alarms.append({"request": request, "expert": experts[expert], "side": side, "shift": shift, "true": true})
        if "confirm" in entry:  # change_confirm: open, confirmed, reverted or expired
            alarms[-1]["confirm"] = entry["confirm"]
    first_true = next((int(a["request"]) for a in alarms if a["true"]), None)
    return {
        "alarms": alarms,
        "false_alarms": sum(not a["true"] for a in alarms),
        "false_drops": sum(not a["true"] and a["side"] == "down" for a in alarms),
        "true_alarm_delay": None if first_true is None else first_true - shock_at,
    }


def regained(chosen: np.ndarray, alarms: list[dict[str, Any]], experts: list[str], shock_at: int, window: int) -> None:
    """Mark each false downward alarm of ``alarms`` (``alarm_report``'s) with ``regained``: whether its expert, sent
    a share ``b`` > 0 of the ``window`` requests before it, was sent at least ``b / 2`` of some ``window`` requests
    after it (before the shock where the alarm came before it: the shock may move the traffic for other reasons);
    None where ``b`` is 0 (nothing to regain)."""
    for alarm in (a for a in alarms if not a["true"] and a["side"] == "down"):
        at, expert = int(alarm["request"]) + 1, experts.index(alarm["expert"])
        before = float(np.mean(chosen[max(0, at - window) : at] == expert)) if at > 0 else 0.0
        end = shock_at if at < shock_at else len(chosen)
        hits = np.concatenate([[0], np.cumsum(chosen[at:end] == expert)])
        best = max((int(hits[t] - hits[t - window]) for t in range(window, len(hits))), default=0)
        alarm["regained"] = None if before == 0 else bool(best >= 0.5 * before * window)


def per_window(
    cost: np.ndarray, quality: np.ndarray, explored: np.ndarray, at_zero: np.ndarray, window: int, target: float
) -> list[dict]:
    """Per ``window`` consecutive requests: the average cost (each request's, shadows included) against the
    ``target``, the answers' quality, and the shares explored and decided at cost weight 0 or below."""
    out = []
    for start in range(0, len(cost), window):
        part = slice(start, start + window)
        avg = float(cost[part].mean())
        out.append(
            {
                "start": start,
                "avg_cost": avg,
                "target": target,
                "tracking_error": abs(avg - target) / target,
                "quality": float(quality[part].mean()),
                "explored": float(explored[part].mean()),
                "weight_at_zero": float(at_zero[part].mean()),
            }
        )
    return out
