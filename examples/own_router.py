"""Three routers of your own for ``coserve eval --routers`` (docs/eval.md, "A router of your own").

``coserve eval --data D --experts E --json R --routers examples/own_router.py:NearestCentroid,stack``
evaluates them beside the built-in routers, on the same folds, with the same figures. Each class is one
of the parts the built-in routers are made of, with the scikit-learn estimator contract: ``__init__``
takes hyper-parameters only, ``fit`` returns self, learned attributes end in ``_``. ``TextStats`` reads
the prompts' texts rather than their vectors (``inputs = "text"``).
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


class TextStats:
    """A quality predictor that reads the prompts' texts: with ``inputs = "text"``, ``fit`` and ``predict``
    are given a list of prompt strings in place of the vectors. Each expert's score is a ridge regression
    on five features of the text: its length in characters and in words (log), and its shares of digits,
    of punctuation and symbols, and of upper-case letters. Evaluated as ``prompt-textstats``: how far the
    text's surface alone goes in telling which expert a prompt is worth paying for."""

    name = "textstats"
    inputs = "text"

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha  # ridge penalty on the standardised features (the intercept is not shrunk)

    @staticmethod
    def features(texts: list[str]) -> np.ndarray:
        """``[n, 5]``: log characters, log words, digit share, symbol share, upper-case share."""
        rows = []
        for text in texts:
            n = max(len(text), 1)
            digits = sum(c.isdigit() for c in text)
            symbols = sum(not c.isalnum() and not c.isspace() for c in text)
            upper = sum(c.isupper() for c in text)
            rows.append([np.log1p(len(text)), np.log1p(len(text.split())), digits / n, symbols / n, upper / n])
        return np.asarray(rows, dtype=float).reshape(len(texts), 5)

    def _design(self, texts: list[str]) -> np.ndarray:
        Z = (self.features(texts) - self.mean_) / self.scale_
        return np.hstack([np.ones((len(Z), 1)), Z])

    def fit(self, texts: list[str], Y: np.ndarray) -> TextStats:
        F = self.features(texts)
        self.mean_ = F.mean(axis=0)
        spread = F.std(axis=0)
        self.scale_ = np.where(spread > 0, spread, 1.0)
        A = self._design(texts)
        penalty = self.alpha * np.eye(A.shape[1])
        penalty[0, 0] = 0.0
        coef = np.zeros((A.shape[1], Y.shape[1]))
        for e in range(Y.shape[1]):
            seen = ~np.isnan(Y[:, e])  # an expert is fitted on the prompts it has a score for
            if seen.any():
                a, y = A[seen], Y[seen, e]
                coef[:, e] = np.linalg.lstsq(a.T @ a + penalty, a.T @ y, rcond=None)[0]
        self.coef_ = coef
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        return self._design(texts) @ self.coef_
