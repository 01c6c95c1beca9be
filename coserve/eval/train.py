"""Fit a router on all of an outcome set, with the same tuning code the harness evaluates.

Training is a fold without held-out rows: ``FoldModels`` fits the parts on every row and tunes the
temperature, the hybrid's alpha and the fallback thresholds on an inner prompt-grouped split, just
as each evaluation fold does; the result is a ``coserve.router.trained.TrainedRouter``.
"""

from __future__ import annotations

import numpy as np

from coserve.errors import ConfigError
from coserve.eval.data import INNER_FOLDS, ExpertCosts, OutcomeSet, grouped_folds
from coserve.eval.sweeps import (
    HYBRID_CLASSIFIER,
    HYBRID_PREDICTOR,
    STACK,
    Axis,
    Fold,
    FoldModels,
    fallback_mask,
    hybrid_scores,
)
from coserve.router.trained import TrainedRouter

__all__ = ["train_router"]


def train_router(
    outcomes: OutcomeSet,
    X: np.ndarray,
    costs: ExpertCosts,
    kind: str = STACK,
    budget_axis: str | None = None,
    budget: float | None = None,
    seed: int = 0,
) -> TrainedRouter:
    """Fit router ``kind`` on every row; ``budget`` (default: the dearest expert's cost) on ``budget_axis``."""
    from coserve.router.mapping import lambda_for_budget

    costs = costs.aligned(outcomes.experts)
    budget_axis = costs.budget_axis(budget_axis)  # refused naming the experts without it
    cost = {"params": costs.params_b, "price": costs.price}[budget_axis]
    budget = float(cost.max()) if budget is None else float(budget)
    classes = sorted(set(outcomes.categories))
    inner, val = grouped_folds(outcomes.prompts, INNER_FOLDS, seed)[0]
    axis = Axis(budget_axis, cost, np.array([budget]))
    fold = Fold(X, list(outcomes.categories), outcomes.scores, X[:1], inner, val, classes, [axis], seed, budget_axis)
    m = FoldModels(fold)
    p, S = m.table
    router = TrainedRouter(
        kind=kind,
        experts=list(outcomes.experts),
        params_b=costs.params_b.copy(),
        price=costs.price.copy(),
        classes=classes,
        S=S,
        p=p,
        budget_axis=budget_axis,
        budget=budget,
        train_ids=np.asarray(outcomes.ids, dtype=str),
        train_category=np.array([classes.index(c) for c in outcomes.categories]),
        fallback_expert=outcomes.experts[m.fallback_expert],
        hyper={"seed": seed},
    )
    if kind.startswith("map-"):
        clf = kind.removeprefix("map-")
        router.temperature = m.posterior(clf)["T"]
        router.classifier = m.classifiers[clf]
        fallback_mask(m, clf)
    elif kind.startswith("prompt-"):
        pred = kind.removeprefix("prompt-")
        _, val_scores = m.predicted(pred)
        router.predictor, router.alpha = m.predictors[pred], 0.0
        router.lam = lambda_for_budget(val_scores, cost, budget)
    elif kind == "hybrid":
        hybrid_scores(m)
        alpha = fold.extras["alpha"]
        post = m.posterior(HYBRID_CLASSIFIER)
        mixed = alpha * (post["val"] @ m.inner_table[1]) + (1 - alpha) * m.predicted(HYBRID_PREDICTOR)[1]
        router.classifier, router.predictor = m.classifiers[HYBRID_CLASSIFIER], m.predictors[HYBRID_PREDICTOR]
        router.temperature, router.alpha = post["T"], alpha
        router.lam = lambda_for_budget(mixed, cost, budget)
        fallback_mask(m, HYBRID_CLASSIFIER)
    elif kind == STACK:
        _, val_scores = m.stacked()
        post = m.posterior(HYBRID_CLASSIFIER)
        router.classifier, router.predictor = m.classifiers[HYBRID_CLASSIFIER], m.predictors[STACK]
        router.temperature, router.alpha = post["T"], 0.0
        router.lam = lambda_for_budget(val_scores, cost, budget)
    else:
        raise ConfigError(f"unknown router kind {kind!r}; use stack, map-<classifier>, prompt-<predictor> or hybrid")
    router.solve()  # the category map at the budget: routes map routers, informs the others
    if "min_confidence" in fold.extras:
        router.min_confidence = float(fold.extras["min_confidence"])
        router.ood_threshold = float(fold.extras["ood_threshold"])
        router.ood = m.ood
    router.hyper.update({k: v for k, v in fold.extras.items() if k not in ("fallback_rate",)})
    return router
