"""How far eval's figures could move with another draw of the same test prompts: paired bootstrap intervals.

A router's operating points are all measured on the same prompts (with ``--folds``, the pooled out-of-fold
prompts: each prompt scored once, by the fold that held it out), so one resample of the prompts moves every
point, and every single expert, together (``coserve.bootstrap``). For each point this gives the 95% interval
of its quality and of its margin over the best single expert and over the best single expert its cost
affords (the dearest expert whose cost on the point's axis is at most the point's average); for each router,
the interval of its headline margin, ``quality_at_best_single_budget`` less the best single expert's quality,
recomputed from the resampled points in each resample (the front's interpolation included). Every router is
resampled with the same draws (same seed, same prompts), so two routers' intervals are of the same resamples.
This module knows nothing about fitting routers or the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from coserve.bootstrap import RESAMPLES, SEED, intervals, resample_means
from coserve.eval import metrics as M
from coserve.eval.data import ExpertCosts
from coserve.eval.metrics import json_number

__all__ = ["add_intervals", "best_single", "margin_entry"]

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
) -> None:
    """Add interval keys to one router's ``points`` (each chose ``choices[j]`` per prompt of ``Y``) and to
    its ``metrics``; no existing key changes."""
    if not points:
        return
    rows, E = np.arange(Y.shape[0]), len(experts)
    axis_cost = {"params": costs.params_b, "price": costs.price}
    best = best_single(base, experts)
    b = list(experts).index(best)
    columns = [Y[:, e] for e in range(E)]  # the single experts: columns 0..E-1
    plan = []  # per point: (its quality column, best-single margin column, affordable margin column or -1)
    for point, choice in zip(points, choices, strict=True):
        quality = Y[rows, choice]
        cost = axis_cost[point["axis"]]
        affords = [e for e in range(E) if np.isfinite(cost[e]) and cost[e] <= point[COST_KEY[point["axis"]]] + 1e-12]
        cheap = max(affords, key=lambda e: base[experts[e]]["quality"]) if affords else None
        plan.append((len(columns), cheap))
        columns += [quality, quality - Y[:, b], quality - Y[:, cheap] if cheap is not None else quality * np.nan]
    on_primary = [j for j, p in enumerate(points) if p["axis"] == primary]
    cost_columns = len(columns)
    columns += [axis_cost[primary][choices[j]] for j in on_primary]
    means = resample_means(np.column_stack(columns), RESAMPLES, SEED)
    bounds = intervals(means[:, :cost_columns])
    for point, (c, cheap) in zip(points, plan, strict=True):
        point["quality_interval_95"] = [json_number(x) for x in bounds[c]]
        point["best_single"] = margin_entry(best, np.nanmean(columns[c + 1]), *bounds[c + 1])
        point["best_single_affordable"] = (
            None if cheap is None else margin_entry(experts[cheap], np.nanmean(columns[c + 2]), *bounds[c + 2])
        )
    budget = float(axis_cost[primary][b])
    quality_at = np.array([
        M.quality_at_budget(list(means[r, cost_columns:]), list(means[r, [plan[j][0] for j in on_primary]]), budget)
        for r in range(len(means))
    ])  # fmt: skip
    both = intervals(np.column_stack([quality_at, quality_at - means[:, b]]))
    metrics["quality_at_best_single_budget_interval_95"] = [json_number(x) for x in both[0]]
    headline = metrics["quality_at_best_single_budget"]
    margin = np.nan if headline is None else headline - base[best]["quality"]
    metrics["margin_at_best_single_budget"] = margin_entry(best, margin, *both[1])
