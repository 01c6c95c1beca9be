"""The fit behind ``coserve bench adapt``: the router fitted on the prior outcomes, and the stream it replays.

* ``split_by_prompt``: two disjoint halves of an outcome file, by a salted hash of each prompt.
* ``fit_stream``: ``map-logistic`` (its classifier categorises the stream; its table starts the posteriors)
  and ``stack`` (``coserve train``'s per-prompt score predictor, every stream item predicted), both on the
  prior rows. With ``folds`` >= 2 it also cross-fits ``stack`` on the prior rows (``cross_fit``: grouped by
  prompt, each fold predicted by a predictor fitted on the others), which the change detector's calibration
  reads (``coserve.router.drift_calibration``, session 13): the prior's own scores against predictions
  made without them, as the stream's scores will stand against predictions made without the stream.

The fits run on one BLAS thread (``ONE_BLAS_THREAD``): the fitted models, and so every figure, change with
BLAS's thread count (the order of its float sums). Knows nothing about the replay, HTTP or serving.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from coserve.errors import ConfigError
from coserve.eval.data import ExpertCosts, OutcomeSet, grouped_folds
from coserve.router.drift_calibration import PriorFit

__all__ = ["ONE_BLAS_THREAD", "FittedStream", "PriorFit", "cross_fit", "fit_stream", "split_by_prompt"]

ONE_BLAS_THREAD = threadpool_limits.wrap(limits=1, user_api="blas")  # see the module's docstring
FOLDS_SEED = 13  # the cross-fit's grouped folds (any fixed seed: the folds only need to be disjoint)


def split_by_prompt(outcomes: OutcomeSet, salt: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two disjoint halves, by a hash of ``salt`` and each prompt (a repeated prompt stays
    on one side); another salt gives another split, independent of the first."""
    side = np.array(
        [hashlib.sha256((salt + prompt).encode()).digest()[0] & 1 for prompt in outcomes.prompts], dtype=bool
    )
    return np.flatnonzero(~side), np.flatnonzero(side)


@dataclass(frozen=True)
class FittedStream:
    """A router fitted on prior outcomes, and the stream it will replay, as ``replay_adapt`` takes them."""

    offline: np.ndarray  # [K, E] the router's per-category scores, in the stream's expert order
    stream: OutcomeSet
    stream_category: np.ndarray  # the router's category index for each stream item
    categories: list[str]
    prior_rows: int
    predicted: np.ndarray  # [stream items, E] the offline per-prompt score of each expert (stack router)
    vectors: np.ndarray | None = None  # [stream items, dim] the predictor's vectors (the neighbour memory's)
    prior_fit: PriorFit | None = None  # the prior's scores beside out-of-fold predictions (fit_stream's folds)


@ONE_BLAS_THREAD
def fit_stream(
    prior: OutcomeSet,
    X_prior: np.ndarray,
    stream: OutcomeSet,
    X_stream: np.ndarray,
    costs: ExpertCosts,
    axis: str,
    predictor_X: tuple[np.ndarray, np.ndarray] | None = None,
    folds: int = 0,
) -> FittedStream:
    """Fit ``map-logistic`` on the prior rows and categorise the stream with its classifier; fit ``stack``
    (``coserve train``'s per-prompt score predictor) on the same rows and predict every stream item. A
    prior of one category (a valid library: one map entry) has no classifier to fit: every stream item
    is in it, the table is the prior's mean scores and the predictions a ridge regression on the vector.
    ``predictor_X`` gives the predictor other vectors of the prior and stream rows (another embedder's).
    ``folds`` >= 2: also the prior's out-of-fold predictions (``cross_fit``; not for a prior of one category)."""
    from coserve.eval.train import train_router

    X_prior_pred, X_stream_pred = predictor_X if predictor_X is not None else (X_prior, X_stream)
    if len(set(prior.categories)) == 1:
        return _one_category(prior, X_prior_pred, stream, X_stream_pred)
    router = train_router(prior, X_prior, costs, kind="map-logistic", budget_axis=axis)
    stream_category = router.category_proba(X_stream).argmax(axis=1)
    order = [stream.experts.index(e) for e in router.experts]  # the router's columns, in the stream's order
    offline = np.empty_like(router.S)
    offline[:, order] = router.S
    stack = train_router(prior, X_prior_pred, costs, kind="stack", budget_axis=axis)
    predicted = np.empty((len(stream), len(stream.experts)))
    predicted[:, [stream.experts.index(e) for e in stack.experts]] = np.clip(stack.scores(X_stream_pred), 0.0, 1.0)
    vectors = np.asarray(X_stream_pred, dtype=np.float64)
    classes = list(router.classes)
    prior_fit = cross_fit(prior, X_prior_pred, costs, axis, classes, stream.experts, folds) if folds else None
    return FittedStream(offline, stream, stream_category, classes, len(prior), predicted, vectors, prior_fit)


def _one_category(prior: OutcomeSet, X_prior: np.ndarray, stream: OutcomeSet, X_stream: np.ndarray) -> FittedStream:
    from coserve.router.predict import STACK_RIDGE_ALPHA, RidgeRegressor

    order = [prior.experts.index(e) for e in stream.experts]  # the prior's columns in the stream's order
    scores = np.asarray(prior.scores, dtype=np.float64)[:, order]
    if np.isnan(scores).all(axis=0).any():
        raise ConfigError("every expert needs at least one score in the prior file")
    offline = np.nanmean(scores, axis=0)[None, :]
    ridge = RidgeRegressor(alpha=STACK_RIDGE_ALPHA).fit(X_prior, scores)
    predicted = np.clip(ridge.predict(X_stream), 0.0, 1.0)
    return FittedStream(
        offline, stream, np.zeros(len(stream), dtype=np.int64), [prior.categories[0]], len(prior), predicted,
        np.asarray(X_stream, dtype=np.float64),
    )  # fmt: skip


def cross_fit(
    prior: OutcomeSet, X_prior: np.ndarray, costs: ExpertCosts, axis: str, categories: Sequence[str],
    experts: Sequence[str], folds: int, kind: str = "stack",
) -> PriorFit:  # fmt: skip
    """Router ``kind`` (the replay's per-prompt predictor: ``stack``; a served router: its own kind) fitted on
    all but one of ``folds`` folds of the prior rows (grouped by prompt: a repeated prompt stays in one fold),
    predicting the rows of that fold; the predictions clipped to [0, 1] as the stream's, in ``experts``'
    order, with the rows' scores and category indices."""
    from coserve.eval.train import train_router

    if folds < 2:
        raise ConfigError(f"the cross-fit needs at least 2 folds, not {folds}")
    unknown = sorted(set(prior.categories) - set(categories))
    if unknown:
        raise ConfigError(f"prior rows of categories the router does not know: {unknown}")
    predicted = np.full((len(prior), len(experts)), np.nan)
    for fit_rows, held_rows in grouped_folds(prior.prompts, folds, FOLDS_SEED):
        stack = train_router(prior.subset(fit_rows), X_prior[fit_rows], costs, kind=kind, budget_axis=axis)
        columns = np.array([list(experts).index(e) for e in stack.experts])
        predicted[np.ix_(held_rows, columns)] = np.clip(stack.scores(X_prior[held_rows]), 0.0, 1.0)
    truth = np.asarray(prior.scores, dtype=np.float64)[:, [list(prior.experts).index(e) for e in experts]]
    category = np.array([list(categories).index(c) for c in prior.categories], dtype=np.int64)
    return PriorFit(truth, predicted, category)
