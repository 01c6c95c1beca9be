"""How far eval's figures could move with another draw of the same test prompts: paired bootstrap intervals.

A router's operating points are all measured on the same prompts (with ``--folds``, the pooled out-of-fold
prompts: each prompt scored once, by the fold that held it out), so one resample of the prompts moves every
point, and every single expert, together (``coserve.bootstrap``). For each point this gives the 95% interval
of its quality and of its margin over the best single expert and over the best single expert its cost
affords (the dearest expert whose cost on the point's axis is at most the point's average); for each router,
the interval of its headline margin, ``quality_at_best_single_budget`` less the best single expert's quality,
recomputed from the resampled points in each resample (the front's interpolation included). The router's
summary figures (``coserve.eval.metrics.summary``: the AUCs, ``oracle_gap_closed``, and on two experts APGR and
CPT) are recomputed likewise in each resample, from the resampled points, single experts and oracle, and get
``summary_intervals_95`` (figure -> [low, high], over the resamples where the figure is defined; [null, null]
where it is in none) and ``summary_undefined_resamples`` (figure -> how many it was not). Every router is
resampled with the same draws (same seed, same prompts), so two routers' intervals are of the same resamples,
and ``add_differences`` gives each router's paired difference from a reference router on each summary figure.
This module knows nothing about fitting routers or the command line.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from coserve.bootstrap import RESAMPLES, SEED, interval, intervals, resample_means
from coserve.errors import ConfigError
from coserve.eval import metrics as M
from coserve.eval.data import ExpertCosts
from coserve.eval.metrics import json_number

__all__ = ["add_differences", "add_intervals", "best_single", "check_reference", "margin_entry"]

COST_KEY = {"params": "avg_params_b", "price": "avg_price"}


def best_single(base: dict[str, Any], experts: Sequence[str]) -> str:
    """The single expert of highest quality in the baselines (the first of ties, as eval's metrics take it)."""
    return max(experts, key=lambda name: base[name]["quality"])


def margin_entry(expert: str, margin: float, low: float, high: float) -> dict[str, Any]:
    """A margin over ``expert`` with its 95% interval, in eval-trained's shape (None for what is undefined)."""
    return {"expert": expert, "margin": json_number(margin), "interval_95": [json_number(low), json_number(high)]}


def add_intervals(
    points: list[dict[str, Any]],
    choices: list[np.ndarray],
    metrics: dict[str, Any],
    Y: np.ndarray,
    costs: ExpertCosts,
    base: dict[str, Any],
    experts: Sequence[str],
    primary: str,
) -> dict[str, np.ndarray]:
    """Add interval keys to one router's ``points`` (each chose ``choices[j]`` per prompt of ``Y``) and to
    its ``metrics``; no existing key changes. Returns the router's summary figures in each resample
    (figure -> [resamples], NaN where undefined), for ``add_differences``; {} for a router without points."""
    if not points:
        return {}
    rows, E, P = np.arange(Y.shape[0]), len(experts), len(points)
    axis_cost = {"params": costs.params_b, "price": costs.price}
    best = best_single(base, experts)
    b = list(experts).index(best)
    strong = int(np.argmax(np.nanmean(Y, axis=0))) if "apgr" in metrics else None  # as the harness takes it
    # the single experts (columns 0..E-1) and the oracle, each prompt's best score (E), as the baselines take it
    columns = [*(Y[:, e] for e in range(E)), np.nan_to_num(Y, nan=-1.0).max(axis=1)]
    plan = []  # per point: (its quality column, best-single margin column, affordable margin column or -1)
    for point, choice in zip(points, choices, strict=True):
        quality = Y[rows, choice]
        cost = axis_cost[point["axis"]]
        affords = [e for e in range(E) if np.isfinite(cost[e]) and cost[e] <= point[COST_KEY[point["axis"]]] + 1e-12]
        cheap = max(affords, key=lambda e: base[experts[e]]["quality"]) if affords else None
        plan.append((len(columns), cheap))
        columns += [quality, quality - Y[:, b], quality - Y[:, cheap] if cheap is not None else quality * np.nan]
    spent_at = len(columns)  # each point's cost on its axis, then (two experts) its fraction of strong calls
    columns += [axis_cost[p["axis"]][c] for p, c in zip(points, choices, strict=True)]
    columns += [(c == strong).astype(float) for c in choices] if strong is not None else []
    means = resample_means(np.column_stack(columns), RESAMPLES, SEED)
    bounds = intervals(means[:, :spent_at])
    for point, (c, cheap) in zip(points, plan, strict=True):
        point["quality_interval_95"] = [json_number(x) for x in bounds[c]]
        point["best_single"] = margin_entry(best, np.nanmean(columns[c + 1]), *bounds[c + 1])
        point["best_single_affordable"] = (
            None if cheap is None else margin_entry(experts[cheap], np.nanmean(columns[c + 2]), *bounds[c + 2])
        )
    quality_raw, spent_raw = means[:, [c for c, _ in plan]], means[:, spent_at : spent_at + P]
    # the summary figures read the resampled means at the report's 6 places, as the report's figures read its
    # points': float noise (a cost of 0.1 summed to 0.1000000000000001) would move an AUC by a grid step
    six = np.round(means, 6)
    quality, spent, fraction = six[:, [c for c, _ in plan]], six[:, spent_at : spent_at + P], six[:, spent_at + P :]
    on = {a: [j for j, p in enumerate(points) if p["axis"] == a] for a in COST_KEY}
    x_range = {a: (float(axis_cost[a].min()), float(axis_cost[a].max())) for a in COST_KEY if f"auc_{a}" in metrics}
    budget = float(axis_cost[primary][b])
    quality_at, resampled = np.empty(len(means)), []
    for r in range(len(means)):  # each resample's figures, as the harness computes the report's
        quality_at[r] = M.quality_at_budget(spent_raw[r, on[primary]], quality_raw[r, on[primary]], budget)
        q_at = M.quality_at_budget(spent[r, on[primary]], quality[r, on[primary]], budget)
        fronts = {a: (spent[r, on[a]], quality[r, on[a]]) for a in x_range}
        two = None if strong is None else (fraction[r], quality[r], six[r, 1 - strong], six[r, strong])
        resampled.append(M.summary(fronts, x_range, q_at, six[r, b], six[r, E], two))
    both = intervals(np.column_stack([quality_at, quality_at - means[:, b]]))
    metrics["quality_at_best_single_budget_interval_95"] = [json_number(x) for x in both[0]]
    headline = metrics["quality_at_best_single_budget"]
    margin = np.nan if headline is None else headline - base[best]["quality"]
    metrics["margin_at_best_single_budget"] = margin_entry(best, margin, *both[1])
    summaries = {k: np.array([s[k] for s in resampled]) for k in resampled[0]}
    ends = intervals(np.column_stack(list(summaries.values())))
    metrics["summary_intervals_95"] = {k: [json_number(x) for x in ends[i]] for i, k in enumerate(summaries)}
    metrics["summary_undefined_resamples"] = {k: int(np.isnan(v).sum()) for k, v in summaries.items()}
    return summaries


def check_reference(reference: str | None, routers: Sequence[str], intervals: bool, flag: str = "reference") -> None:
    """Refuse, before any work, a reference router that is not among ``routers`` or that comes without the
    intervals its differences are drawn from."""
    if reference is not None and not intervals:
        turn_on = "leave out --no-intervals" if flag.startswith("--") else "evaluate with intervals=True"
        raise ConfigError(f"{flag} {reference}: the differences come with the intervals; {turn_on}")
    if reference is not None and reference not in routers:
        raise ConfigError(f"{flag} {reference}: not a router evaluated; one of {', '.join(routers)}")


def add_differences(
    report: dict[str, Any], resampled: dict[str, dict[str, np.ndarray]], reference: str | None, users: Collection[str]
) -> None:
    """Add to each router with intervals its paired difference from ``reference`` (None: the built-in router,
    not one of ``users``, of highest AUC on the primary axis; the first of ties) on each summary figure both
    have: ``metrics.difference_from_reference`` and ``meta.reference``. ``resampled`` holds every router's
    ``add_intervals`` return, all of the same resamples, so a difference's interval is of its resampled
    differences; a resample where either router's figure is undefined is left out of it, and counted."""
    routers = report["routers"]
    if reference is None:
        auc = f"auc_{report['meta']['primary_axis']}"
        ranked = [n for n in routers if n not in users and routers[n]["metrics"].get(auc) is not None]
        reference = max(ranked, key=lambda n: routers[n]["metrics"][auc], default=None)
    check_reference(reference, list(routers), True)
    report["meta"]["reference"] = reference
    if reference is None or not resampled.get(reference):
        return
    theirs, their_figures = resampled[reference], routers[reference]["metrics"]
    for name, mine in resampled.items():
        figures = {}
        for figure in (f for f in mine if f in theirs):
            resampled_difference = mine[figure] - theirs[figure]
            a, b = routers[name]["metrics"][figure], their_figures[figure]
            figures[figure] = {
                "difference": None if a is None or b is None else _signed(a - b),
                "interval_95": [_signed(x) for x in interval(resampled_difference)],
                "undefined_resamples": int(np.isnan(resampled_difference).sum()),
            }
        if mine:
            routers[name]["metrics"]["difference_from_reference"] = {"router": reference, "figures": figures}


def _signed(x: float) -> float | None:
    """``json_number`` without a negative zero (a difference of equal figures summed in another order)."""
    value = json_number(x)
    return None if value is None else value + 0.0
