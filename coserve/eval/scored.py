"""A saved router scored on held-out outcomes: what ``coserve train`` wrote, as a library would deploy it.

``coserve eval --data`` refits every router on each fold; the folder a library serves is never scored that
way. ``score_trained`` loads that folder, embeds the held-out prompts with the router's own embedder, routes
each at the router's budget (or another on the same axis) exactly as ``TrainedRouter.expert_for`` does for
a server, and reads each chosen expert's score from the file. Beside the router's quality and average cost
it gives the same baselines as eval (each single expert, random, oracle), the best single expert, the best
single expert the router's average cost affords, and the router's margin over each with a 95% interval from
a paired bootstrap over the test prompts (``RESAMPLES``, seeded): whether a margin is more than the luck of
which prompts were held out. Knows nothing about the command line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coserve.bootstrap import RESAMPLES, interval, intervals, resample_means
from coserve.bootstrap import SEED as BOOTSTRAP_SEED
from coserve.errors import ConfigError
from coserve.eval.data import ExpertCosts, OutcomeSet
from coserve.eval.harness import baselines, json_number
from coserve.eval.metrics import category_accuracy
from coserve.router.trained import TrainedRouter

__all__ = ["RESAMPLES", "check_budget", "compare_scored", "score_trained", "trained_embedder_name"]


def score_trained(
    router: TrainedRouter, test: OutcomeSet, X: np.ndarray, budget: float | None = None, decisions: bool = False
) -> dict[str, Any]:
    """The report of ``router`` on ``test`` (its rows scoring every expert the router routes to, in the
    router's order), ``X`` the prompts' vectors from the router's embedder; ``budget`` on the router's axis
    (None: the budget it was trained at); with ``decisions``, each prompt's id, expert and score too."""
    if list(test.experts) != list(router.experts):
        raise ValueError("the test set's experts must be the router's, in its order")
    check_budget(router, budget)
    names = router.experts
    chosen = np.array([names.index(name) for name in router.expert_for(X, budget)])
    rows = np.arange(len(chosen))
    Y = np.asarray(test.scores, dtype=np.float64)
    costs = ExpertCosts(tuple(names), router.params_b, router.price, "the router's manifest")
    base = baselines(Y, names, costs, router.cost)
    quality = float(np.nanmean(Y[rows, chosen]))
    spent = float(router.cost[chosen].mean())
    singles = {name: base[name] for name in names}
    best = max(singles, key=lambda name: singles[name]["quality"])
    affordable = [n for n in names if np.isfinite(router.cost[names.index(n)]) and router.cost[names.index(n)] <= spent]
    best_affordable = max(affordable, key=lambda name: singles[name]["quality"]) if affordable else None
    report: dict[str, Any] = {
        "router": {
            "kind": router.kind,
            "budget_axis": router.budget_axis,
            "budget": json_number(router.budget if budget is None else budget),
            "quality": json_number(quality),
            "avg_params_b": json_number(router.params_b[chosen].mean()),
            "avg_price": json_number(router.price[chosen].mean()),
            "share": {name: float((chosen == e).mean()) for e, name in enumerate(names)},
            "fallback_rate": float(router.fallback_mask(X).mean()),
            "by_category": _by_category(test, Y, chosen, router.cost),
        },
        "baselines": base,
        "best_single": _margin(Y, chosen, names, best),
        "best_single_affordable": None if best_affordable is None else _margin(Y, chosen, names, best_affordable),
    }
    if router.classifier is not None:
        predicted = np.asarray(router.classes)[router.category_proba(X).argmax(axis=1)]
        report["router"]["category_accuracy"] = category_accuracy(list(predicted), list(test.categories))
    if decisions:
        report["decisions"] = [
            {"id": test.ids[i], "category": test.categories[i], "expert": names[e], "score": json_number(Y[i, e])}
            for i, e in enumerate(chosen)
        ]
    return report


def check_budget(router: TrainedRouter, budget: float | None) -> None:
    """ConfigError where ``budget`` (on the router's axis; None: its own) cannot be spent: below the cheapest
    expert's cost."""
    if budget is not None and (not np.isfinite(budget) or budget < np.nanmin(router.cost)):
        raise ConfigError(
            f"--budget {budget:g}: below the cheapest expert's {router.budget_axis} cost ({np.nanmin(router.cost):g})"
        )


def _margin(Y: np.ndarray, chosen: np.ndarray, names: list[str], expert: str) -> dict[str, Any]:
    """The router's quality less ``expert``'s on the same prompts, with its paired bootstrap 95% interval."""
    diff = Y[np.arange(len(chosen)), chosen] - Y[:, names.index(expert)]
    diff = diff[np.isfinite(diff)]
    low, high = interval(resample_means(diff, RESAMPLES, BOOTSTRAP_SEED))
    return {"expert": expert, "margin": json_number(diff.mean()), "interval_95": [json_number(low), json_number(high)]}


def _by_category(test: OutcomeSet, Y: np.ndarray, chosen: np.ndarray, cost: np.ndarray) -> dict[str, Any]:
    out = {}
    categories = np.asarray(test.categories)
    for name in sorted(set(test.categories)):
        rows = np.flatnonzero(categories == name)
        out[name] = {
            "n": len(rows),
            "quality": json_number(np.nanmean(Y[rows, chosen[rows]])),
            "avg_cost": json_number(cost[chosen[rows]].mean()),
        }
    return out


def trained_embedder_name(router: TrainedRouter) -> str:
    """The embedder the router was trained on (what a library serving it embeds prompts with)."""
    from coserve.config import RouterSettings

    return str(router.hyper.get("embedder", RouterSettings.model_fields["embedder"].default))


def compare_scored(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """B - A from two ``score_trained`` reports made with ``decisions`` on the same prompts: the paired
    difference in quality and in each average cost, with 95% intervals from one bootstrap over the prompts,
    and the share of prompts on which the two routers chose different experts."""
    if [d["id"] for d in a["decisions"]] != [d["id"] for d in b["decisions"]]:
        raise ValueError("the two reports must score the same prompts, in the same order")
    figures = {"quality": "score", "avg_params_b": "avg_params_b", "avg_price": "avg_price"}  # report key: source
    pairs = list(zip(a["decisions"], b["decisions"], strict=True))
    values = np.array(
        [[_decision_figure(b, d, f) - _decision_figure(a, c, f) for f in figures.values()] for c, d in pairs],
        dtype=np.float64,
    ).reshape(len(pairs), len(figures))
    bounds = intervals(resample_means(values, RESAMPLES, BOOTSTRAP_SEED))
    out: dict[str, Any] = {}
    for j, name in enumerate(figures):
        column = values[:, j]
        mean = column[np.isfinite(column)].mean() if np.isfinite(column).any() else np.nan
        out[name] = {"difference": json_number(mean), "interval_95": [json_number(x) for x in bounds[j]]}
    out["chose_differently"] = float(np.mean([c["expert"] != d["expert"] for c, d in pairs]))
    out["n"] = len(pairs)
    return out


def _decision_figure(report: dict[str, Any], decision: dict[str, Any], figure: str) -> float:
    """A prompt's score under the report's router, or the cost (``avg_params_b``, ``avg_price``) of the
    expert it chose; NaN where the file or the manifest has none."""
    value = decision["score"] if figure == "score" else report["baselines"][decision["expert"]][figure]
    return float("nan") if value is None else float(value)
