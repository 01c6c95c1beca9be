"""Two routers of your own for ``coserve eval --routers`` (docs/eval.md, "A router of your own").

``coserve eval --data D --experts E --json R --routers examples/own_router.py:NearestCentroid,stack``
evaluates them beside the built-in routers, on the same folds, with the same figures. Each class is one
of the parts the built-in routers are made of, with the scikit-learn estimator contract: ``__init__``
takes hyper-parameters only, ``fit`` returns self, learned attributes end in ``_``.
"""

from __future__ import annotations

import numpy as np


class NearestCentroid:
    """A category classifier (``fit(X, categories)``, ``classes_``, ``predict_proba``): each category's
    mean prompt vector; a prompt's posterior is a softmax of its cosine similarity to each mean.
    Evaluated as ``map-centroid``: its top category goes through the budget-optimal map."""

    name = "centroid"

    def __init__(self, sharpness: float = 20.0):
        self.sharpness = sharpness  # softmax inverse temperature over cosine similarities

    def fit(self, X: np.ndarray, categories: list[str]) -> NearestCentroid:
        labels = np.asarray(categories)
        self.classes_ = np.unique(labels)
        means = np.stack([X[labels == c].mean(axis=0) for c in self.classes_])
        self.centroids_ = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        logits = self.sharpness * unit @ self.centroids_.T
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)


class AlwaysCheapest:
    """A quality predictor (``fit(X, Y)``, ``predict(X) -> [n, experts]``) that predicts 0 for every
    expert: every cost weight then picks the cheapest expert (ties go to the cheaper one). Evaluated as
    ``prompt-cheapest``: a floor any router should clear."""

    name = "cheapest"

    def fit(self, X: np.ndarray, Y: np.ndarray) -> AlwaysCheapest:
        self.n_experts_ = Y.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.zeros((len(X), self.n_experts_))
