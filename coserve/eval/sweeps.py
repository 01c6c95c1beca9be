"""One fold of an evaluation: fit the routers' parts on the training rows, sweep them on held-out rows.

``FoldModels`` fits each classifier and predictor at most once per fold (on the training part, and
once more on an inner split whose held-out validation rows choose the temperature, the hybrid's
alpha and the fallback thresholds). ``sweep(name, fold)`` returns, for one router, the expert chosen
for every held-out row at every operating point ``(axis, key)``: ``key`` is a budget for the
category-map routers and a cost weight ``lam`` for the per-prompt ones. The harness pools these
choices over folds. This module reads no files and knows nothing about reports.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from coserve.errors import InfeasibleConstraints

__all__ = [
    "ALPHAS",
    "HYBRID_CLASSIFIER",
    "HYBRID_PREDICTOR",
    "LAMBDAS",
    "STACK",
    "TOP_K",
    "Axis",
    "Fold",
    "FoldModels",
    "category_table",
    "fallback_mask",
    "hybrid_scores",
    "sweep",
]

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the category prior in the hybrid's expected score
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 30.0, 40)])  # cost weights, costs scaled to max 1
HYBRID_CLASSIFIER = "logistic"
HYBRID_PREDICTOR = "knn"
TOP_K = 2  # experts kept per category by the top-k router
STACK = "stack"  # ridge on [category posterior (of HYBRID_CLASSIFIER), prompt vector]: predict.stack_design
CONFIDENCE_THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # candidates for the max-probability fallback
OOD_PERCENTILE = 99.0

Choices = dict[tuple[str, float], np.ndarray]  # (axis, key) -> expert index per held-out row


@dataclass(frozen=True)
class Axis:
    """A cost axis: per-expert costs and the budgets the category-map routers are solved at."""

    name: str  # "params" (billions of active parameters) or "price" (USD per million tokens)
    cost: np.ndarray  # [E]
    budgets: np.ndarray  # budgets swept by the map routers, in the axis's unit


@dataclass
class Fold:
    """The rows of one fold: training part (with an inner train/validation split) and held-out part."""

    X: np.ndarray  # [n_train, d] embeddings of the training rows
    categories: list[str]  # [n_train]
    Y: np.ndarray  # [n_train, E] scores of the training rows
    X_test: np.ndarray  # [n_test, d]
    inner: np.ndarray  # indices into the training rows: fit part of the inner split
    val: np.ndarray  # indices into the training rows: validation part of the inner split
    classes: list[str]  # every category of the whole training set (column order of posteriors)
    axes: list[Axis]
    seed: int
    primary: str = "params"  # axis the tuning criteria are measured on
    extras: dict[str, Any] = field(default_factory=dict)  # per-fold results beside the choices
    user_routers: dict[str, str] = field(default_factory=dict)  # router name -> the user's spec (eval.user_router)
    texts: Sequence[str] = ()  # [n_train] the training rows' prompts, for a user's class that reads text
    texts_test: Sequence[str] = ()  # [n_test] the held-out rows' prompts


def category_table(categories: list[str], classes: list[str], Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category priors ``p[K]`` and per-category mean scores ``S[K, E]`` (NaN-aware; unseen -> overall mean)."""
    cats = np.asarray(categories)
    overall = np.nanmean(Y, axis=0)
    p = np.array([(cats == c).mean() for c in classes])
    S = np.array([np.nanmean(Y[cats == c], axis=0) if (cats == c).any() else overall for c in classes])
    return p, np.nan_to_num(S, nan=0.0)


def _seeded(factory: Any, name: str, seed: int) -> Any:
    """Build a registered model, passing the seed when its constructor takes one."""
    accepted: Any
    try:
        accepted = inspect.signature(factory(name).__class__.__init__).parameters
    except (TypeError, ValueError):
        accepted = {}
    for key in ("seed", "random_state"):
        if key in accepted:
            return factory(name, **{key: seed})
    return factory(name)


def _aligned(proba: np.ndarray, model_classes: Any, classes: list[str]) -> np.ndarray:
    out = np.zeros((proba.shape[0], len(classes)), dtype=np.float64)
    for j, c in enumerate(np.asarray(model_classes).astype(str)):
        out[:, classes.index(c)] = proba[:, j]
    return out


def _quality(Y: np.ndarray, choice: np.ndarray) -> float:
    return float(np.nanmean(Y[np.arange(len(choice)), choice]))


class FoldModels:
    """Each part fitted once per fold, on demand."""

    def __init__(self, fold: Fold):
        self.f = fold
        self._posteriors: dict[str, dict[str, Any]] = {}
        self._predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._maps: dict[tuple[str, float], np.ndarray | None] = {}
        self.hybrid: np.ndarray | None = None  # the hybrid's expected scores on held-out rows, once chosen
        self.classifiers: dict[str, Any] = {}  # fitted on the whole training part, by name
        self.predictors: dict[str, Any] = {}
        self.ood: Any = None  # the OOD scorer of the fallback (fitted on the inner part)

    @cached_property
    def table(self) -> tuple[np.ndarray, np.ndarray]:
        return category_table(self.f.categories, self.f.classes, self.f.Y)

    @cached_property
    def inner_table(self) -> tuple[np.ndarray, np.ndarray]:
        cats = [self.f.categories[i] for i in self.f.inner]
        return category_table(cats, self.f.classes, self.f.Y[self.f.inner])

    @cached_property
    def fallback_expert(self) -> int:
        """The best single expert on the training rows."""
        return int(np.argmax(np.nanmean(self.f.Y, axis=0)))

    def _factory(self, router: str, registered: Any, columns: int | None = None) -> Any:
        """What builds a router's part: the registry's factory, or the user's class where the router is theirs."""
        if router not in self.f.user_routers:
            return registered
        from coserve.eval.user_router import checked_factory

        return checked_factory(self.f.user_routers[router], columns)

    def posterior(self, clf: str) -> dict[str, Any]:
        """Raw and calibrated category posteriors on held-out and validation rows, and the temperature."""
        if clf not in self._posteriors:
            from coserve.eval.user_router import fold_inputs
            from coserve.router.calibrate import apply_temperature, fit_temperature
            from coserve.router.classify import make_classifier

            f = self.f
            make_classifier = self._factory(f"map-{clf}", make_classifier)
            X, X_inner, X_val, X_test = fold_inputs(f, f"map-{clf}")
            inner_model = _seeded(make_classifier, clf, f.seed).fit(X_inner, [f.categories[i] for i in f.inner])
            val_raw = _aligned(inner_model.predict_proba(X_val), inner_model.classes_, f.classes)
            y_val = np.array([f.classes.index(f.categories[i]) for i in f.val])
            T = float(fit_temperature(val_raw, y_val))
            model = _seeded(make_classifier, clf, f.seed).fit(X, f.categories)
            self.classifiers[clf] = model
            raw = _aligned(model.predict_proba(X_test), model.classes_, f.classes)
            self._posteriors[clf] = {
                "raw": raw,
                "cal": np.asarray(apply_temperature(raw, T)),
                "val": np.asarray(apply_temperature(val_raw, T)),
                "T": T,
            }
        return self._posteriors[clf]

    def predicted(self, pred: str) -> tuple[np.ndarray, np.ndarray]:
        """Predicted scores ``[n_test, E]`` (fit on the training part) and ``[n_val, E]`` (fit on inner)."""
        if pred not in self._predictions:
            from coserve.eval.user_router import fold_inputs
            from coserve.router.predict import make_predictor

            f = self.f
            make_predictor = self._factory(f"prompt-{pred}", make_predictor, f.Y.shape[1])
            X, X_inner, X_val, X_test = fold_inputs(f, f"prompt-{pred}")
            self.predictors[pred] = _seeded(make_predictor, pred, f.seed).fit(X, f.Y)
            test = self.predictors[pred].predict(X_test)
            val = _seeded(make_predictor, pred, f.seed).fit(X_inner, f.Y[f.inner]).predict(X_val)
            self._predictions[pred] = (np.asarray(test, float), np.asarray(val, float))
        return self._predictions[pred]

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        """The stack router's expected scores ``[n_test, E]`` and ``[n_val, E]``: ridge fitted on the
        true categories (one-hot) beside the vectors, applied to the calibrated posterior."""
        if STACK not in self._predictions:
            from coserve.router.predict import STACK_RIDGE_ALPHA, RidgeRegressor, stack_design

            f = self.f
            post = self.posterior(HYBRID_CLASSIFIER)
            onehot = np.eye(len(f.classes))[[f.classes.index(c) for c in f.categories]]
            self.predictors[STACK] = RidgeRegressor(STACK_RIDGE_ALPHA).fit(stack_design(onehot, f.X), f.Y)
            test = self.predictors[STACK].predict(stack_design(post["cal"], f.X_test))
            inner = RidgeRegressor(STACK_RIDGE_ALPHA).fit(stack_design(onehot[f.inner], f.X[f.inner]), f.Y[f.inner])
            val = inner.predict(stack_design(post["val"], f.X[f.val]))
            self._predictions[STACK] = (np.asarray(test, float), np.asarray(val, float))
        return self._predictions[STACK]

    def assignment(self, axis: Axis, budget: float) -> np.ndarray | None:
        """The category -> expert map solved on the training part at ``budget`` (None if infeasible)."""
        key = (axis.name, float(budget))
        if key not in self._maps:
            from coserve.router.mapping import solve_map

            p, S = self.table
            try:
                self._maps[key] = np.asarray(solve_map(p, S, axis.cost, float(budget)), dtype=int)
            except InfeasibleConstraints:
                self._maps[key] = None
        return self._maps[key]


def _lam_sweep(scores: np.ndarray, axes: list[Axis]) -> Choices:
    from coserve.router.mapping import choose_per_prompt

    out: Choices = {}
    for axis in axes:
        scaled = axis.cost / axis.cost.max()
        for lam in LAMBDAS:
            out[(axis.name, float(lam))] = np.asarray(choose_per_prompt(scores, scaled, float(lam)), dtype=int)
    return out


def _map_router(m: FoldModels, clf: str, fallback: bool) -> Choices:
    post = m.posterior(clf)
    top = post["cal"].argmax(axis=1)
    out: Choices = {}
    for axis in m.f.axes:
        for budget in axis.budgets:
            assignment = m.assignment(axis, budget)
            if assignment is not None:
                out[(axis.name, float(budget))] = assignment[top]
    if not fallback:
        return out
    uncertain = fallback_mask(m, clf)
    m.f.extras["fallback_rate"] = float(uncertain.mean()) if len(uncertain) else 0.0
    return {key: np.where(uncertain, m.fallback_expert, choice) for key, choice in out.items()}


def fallback_mask(m: FoldModels, clf: str) -> np.ndarray:
    """Held-out rows sent to the fallback: top probability below a threshold tuned on validation, or OOD."""
    from coserve.router.calibrate import OODScorer

    f, post = m.f, m.posterior(clf)
    primary = next(a for a in f.axes if a.name == f.primary)
    maps = [a for a in (m.assignment(primary, b) for b in primary.budgets) if a is not None]
    val_top, val_conf = post["val"].argmax(axis=1), post["val"].max(axis=1)
    Y_val = f.Y[f.val]

    def val_quality(threshold: float) -> float:
        picks = [np.where(val_conf < threshold, m.fallback_expert, a[val_top]) for a in maps]
        return float(np.mean([_quality(Y_val, c) for c in picks]))

    threshold = max(CONFIDENCE_THRESHOLDS, key=lambda t: (val_quality(t), -t))
    scorer = m.ood = OODScorer().fit(f.X[f.inner])
    ood_threshold = float(np.percentile(scorer.score(f.X[f.val]), OOD_PERCENTILE))
    f.extras.update(min_confidence=threshold, ood_threshold=ood_threshold)
    ood = np.asarray(scorer.score(f.X_test)) > ood_threshold
    return (post["cal"].max(axis=1) < threshold) | ood


def hybrid_scores(m: FoldModels) -> np.ndarray:
    """alpha * (posterior @ S) + (1 - alpha) * predicted, alpha chosen on the validation rows."""
    from coserve.eval.metrics import normalised_auc

    if m.hybrid is not None:
        return m.hybrid
    f = m.f
    post = m.posterior(HYBRID_CLASSIFIER)
    test_pred, val_pred = m.predicted(HYBRID_PREDICTOR)
    primary = [a for a in f.axes if a.name == f.primary]
    Y_val = f.Y[f.val]
    best_oracle = float(np.nanmean(np.nanmax(Y_val, axis=1)))

    def val_auc(alpha: float) -> float:
        mixed = alpha * (post["val"] @ m.inner_table[1]) + (1 - alpha) * val_pred
        choices = _lam_sweep(mixed, primary)
        cost = primary[0].cost
        xs = [float(cost[c].mean()) for c in choices.values()]
        qs = [_quality(Y_val, c) for c in choices.values()]
        return normalised_auc(xs, qs, float(cost.min()), float(cost.max()), best_oracle)

    alpha = max(ALPHAS, key=val_auc)
    f.extras["alpha"] = alpha
    m.hybrid = alpha * (post["cal"] @ m.table[1]) + (1 - alpha) * test_pred
    return m.hybrid


def sweep(name: str, m: FoldModels) -> Choices:
    """Every operating point of router ``name`` on this fold's held-out rows."""
    if name.startswith("map-"):
        clf = name.removeprefix("map-").removesuffix("+fallback")
        return _map_router(m, clf, fallback=name.endswith("+fallback"))
    if name.startswith("prompt-"):
        return _lam_sweep(m.predicted(name.removeprefix("prompt-"))[0], m.f.axes)
    if name == "hybrid":
        return _lam_sweep(hybrid_scores(m), m.f.axes)
    if name == STACK:
        return _lam_sweep(m.stacked()[0], m.f.axes)
    if name == f"top{TOP_K}":
        scores = hybrid_scores(m)
        S = m.table[1]
        allowed = np.zeros_like(S, dtype=bool)
        np.put_along_axis(allowed, np.argsort(-S, axis=1, kind="stable")[:, :TOP_K], True, axis=1)
        top = m.posterior(HYBRID_CLASSIFIER)["cal"].argmax(axis=1)
        return _lam_sweep(np.where(allowed[top], scores, -1e6), m.f.axes)
    raise KeyError(name)
