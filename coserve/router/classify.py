"""Category classifiers over prompt embeddings, following the scikit-learn estimator contract.

``__init__`` stores hyper-parameters only; ``fit`` returns self; learned attributes end in ``_``;
``predict_proba`` columns follow ``classes_``. Learned state is plain arrays, saved as ``.npz``
next to a JSON manifest (no pickle). This module knows nothing about experts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coserve.errors import ConfigError

__all__ = ["CLASSIFIERS", "LogisticClassifier", "make_classifier"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


class LogisticClassifier:
    """Multinomial logistic regression (L2), fitted with scikit-learn, applied with numpy."""

    name = "logistic"

    def __init__(self, C: float = 10.0, max_iter: int = 2000, temperature: float = 1.0):
        self.C = C  # inverse L2 strength; embeddings are unit vectors, so a weak prior fits them well
        self.max_iter = max_iter
        self.temperature = temperature  # > 1 softens probabilities; fitted by calibration later

    def fit(self, X: np.ndarray, y: list[str] | np.ndarray) -> LogisticClassifier:
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(y)
        if len(set(labels.tolist())) < 2:
            raise ConfigError("a category classifier needs examples of at least two categories")
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        model.fit(X, labels)
        self.classes_ = np.asarray(model.classes_)
        self.coef_ = model.coef_.astype(np.float32)
        self.intercept_ = model.intercept_.astype(np.float32)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        logits = X @ self.coef_.T + self.intercept_
        if logits.shape[1] == 1:  # binary: scikit-learn keeps one row of weights
            logits = np.concatenate([-logits, logits], axis=1) / 2
        return _softmax(logits / self.temperature)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyper-parameters (JSON) and learned arrays (npz)."""
        params = {"C": self.C, "max_iter": self.max_iter, "temperature": self.temperature}
        arrays = {"classes_": self.classes_.astype(str), "coef_": self.coef_, "intercept_": self.intercept_}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> LogisticClassifier:
        model = cls(**params)
        model.classes_ = np.asarray(arrays["classes_"]).astype(str)
        model.coef_ = np.asarray(arrays["coef_"], dtype=np.float32)
        model.intercept_ = np.asarray(arrays["intercept_"], dtype=np.float32)
        return model


CLASSIFIERS: dict[str, type[LogisticClassifier]] = {"logistic": LogisticClassifier}


def make_classifier(name: str) -> LogisticClassifier:
    try:
        return CLASSIFIERS[name]()
    except KeyError:
        raise ConfigError(f"unknown classifier {name!r}; known: {sorted(CLASSIFIERS)}") from None
