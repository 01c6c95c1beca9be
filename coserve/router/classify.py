"""Category classifiers over prompt embeddings, following the scikit-learn estimator contract.

``__init__`` stores hyper-parameters only; ``fit`` returns self; learned attributes end in ``_``;
``predict_proba`` columns follow ``classes_``. Learned state is plain arrays, saved as ``.npz``
next to a JSON manifest (no pickle): scikit-learn fits, numpy predicts, so loading needs neither
scikit-learn nor pickle. Three classifiers: multinomial logistic regression, cosine kNN (exact or
HNSW, see ``neighbours.py``) and a one-hidden-layer MLP. This module knows nothing about experts.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol, Self

import numpy as np

from coserve.errors import ConfigError
from coserve.router.neighbours import NeighbourIndex
from coserve.router.registry import build

__all__ = [
    "CLASSIFIERS",
    "Classifier",
    "KNNClassifier",
    "LogisticClassifier",
    "MLPClassifier",
    "make_classifier",
    "mlp_arrays",
    "mlp_forward",
    "mlp_layers",
]


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


class Classifier(Protocol):
    """What the router needs of a category classifier (every entry of ``CLASSIFIERS``)."""

    name: str
    classes_: np.ndarray

    def fit(self, X: np.ndarray, y: list[str] | np.ndarray) -> Self: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self: ...


def _labels(y: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted class names (str) and each example's index into them; at least two classes."""
    classes, codes = np.unique(np.asarray(y).astype(str), return_inverse=True)
    if len(classes) < 2:
        raise ConfigError("a category classifier needs examples of at least two categories")
    return classes, codes.astype(np.int64)


# -- MLP weights in numpy (shared with predict.py) -------------------------------------------------
def mlp_arrays(layers: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """``(coef, intercept)`` pairs (e.g. a fitted scikit-learn MLP's) as float32 ``coef_0, intercept_0, ...``."""
    arrays: dict[str, np.ndarray] = {}
    for i, (coef, intercept) in enumerate(layers):
        arrays[f"coef_{i}"] = np.asarray(coef, dtype=np.float32)
        arrays[f"intercept_{i}"] = np.asarray(intercept, dtype=np.float32)
    return arrays


def mlp_layers(arrays: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(coef, intercept)`` pairs stored by ``mlp_arrays``, in order."""
    n_layers = sum(1 for key in arrays if key.startswith("coef_"))
    return [
        (np.asarray(arrays[f"coef_{i}"], dtype=np.float32), np.asarray(arrays[f"intercept_{i}"], dtype=np.float32))
        for i in range(n_layers)
    ]


class SklearnMLPBase:
    """What the MLP classifier and regressor share: hyper-parameters, fitting with scikit-learn
    (Adam, optional early stopping, convergence warnings silenced) and keeping only the weights."""

    def __init__(self, hidden: int = 256, alpha: float = 1e-4, max_iter: int = 300, seed: int = 0):
        self.hidden = hidden
        self.alpha = alpha  # L2 penalty
        self.max_iter = max_iter
        self.seed = seed

    def _params(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "alpha": self.alpha, "max_iter": self.max_iter, "seed": self.seed}

    def _fit_layers(
        self, estimator: Any, X: np.ndarray, y: np.ndarray, early_stopping: bool
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Fit a scikit-learn MLP class on (X, y) and return its layers as float32 (coef, intercept)."""
        from sklearn.exceptions import ConvergenceWarning

        model = estimator(
            hidden_layer_sizes=(self.hidden,),
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=early_stopping,
            random_state=self.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
        return mlp_layers(mlp_arrays(list(zip(model.coefs_, model.intercepts_, strict=True))))


def mlp_forward(X: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """ReLU hidden layers, then the output layer's pre-activation (logits or regression outputs)."""
    h = np.asarray(X, dtype=np.float32)
    for i, (coef, intercept) in enumerate(layers):
        h = h @ coef + intercept
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def _early_stopping_fits(n: int, n_classes: int, min_count: int) -> bool:
    """Whether scikit-learn's 10% stratified validation split can hold every class (and is worth it)."""
    return n >= 50 and min_count >= 2 and int(np.ceil(0.1 * n)) >= n_classes


# -- kNN ---------------------------------------------------------------------------------------------
KNN_SMOOTHING = 1e-3  # added to every class's vote weight, so no probability is exactly 0


class KNNClassifier:
    """Cosine k-nearest neighbours with similarity-weighted votes (HNSW from ``exact_below`` rows)."""

    name = "knn"

    def __init__(self, k: int = 15, exact_below: int = 5000, ef: int = 64):
        self.k = k
        self.exact_below = exact_below  # training rows from which hnswlib replaces the exact search
        self.ef = ef  # hnswlib query beam width (raised to k when smaller)

    def fit(self, X: np.ndarray, y: list[str] | np.ndarray) -> KNNClassifier:
        self.classes_, self.codes_ = _labels(y)
        self.vectors_ = np.asarray(X, dtype=np.float32)
        self.index_ = NeighbourIndex(self.vectors_, exact_below=self.exact_below, ef=self.ef)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        idx, sims = self.index_.query(X, self.k)
        weights = np.maximum(sims, 0.0)  # an opposed neighbour gives no vote
        votes = np.zeros((len(idx), len(self.classes_)), dtype=np.float32)
        np.add.at(votes, (np.repeat(np.arange(len(idx)), idx.shape[1]), self.codes_[idx].ravel()), weights.ravel())
        votes += KNN_SMOOTHING
        return votes / votes.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyper-parameters (JSON) and the training rows and labels (npz); the index is rebuilt on load."""
        params = {"k": self.k, "exact_below": self.exact_below, "ef": self.ef}
        arrays = {"classes_": self.classes_.astype(str), "vectors_": self.vectors_, "codes_": self.codes_}
        return params, arrays

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KNNClassifier:
        model = cls(**params)
        model.classes_ = np.asarray(arrays["classes_"]).astype(str)
        model.codes_ = np.asarray(arrays["codes_"], dtype=np.int64)
        model.vectors_ = np.asarray(arrays["vectors_"], dtype=np.float32)
        model.index_ = NeighbourIndex(model.vectors_, exact_below=model.exact_below, ef=model.ef)
        return model


# -- MLP ---------------------------------------------------------------------------------------------
class MLPClassifier(SklearnMLPBase):
    """One-hidden-layer ReLU network, fitted with scikit-learn (Adam, early stopping), applied with numpy."""

    name = "mlp"

    def fit(self, X: np.ndarray, y: list[str] | np.ndarray) -> MLPClassifier:
        from sklearn.neural_network import MLPClassifier as SklearnMLP

        classes, codes = _labels(y)
        # A small library (a few examples per category) cannot spare a stratified validation split.
        early = _early_stopping_fits(len(codes), len(classes), int(np.bincount(codes).min()))
        self.layers_ = self._fit_layers(SklearnMLP, np.asarray(X, dtype=np.float32), codes, early)
        self.classes_ = classes
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        logits = mlp_forward(X, self.layers_)
        if logits.shape[1] == 1:  # binary: scikit-learn keeps one logistic output unit
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        return _softmax(logits)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyper-parameters (JSON) and the layer weights (npz)."""
        return self._params(), {"classes_": self.classes_.astype(str), **mlp_arrays(self.layers_)}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPClassifier:
        model = cls(**params)
        model.classes_ = np.asarray(arrays["classes_"]).astype(str)
        model.layers_ = mlp_layers(arrays)
        return model


CLASSIFIERS: dict[str, type[Classifier]] = {
    "logistic": LogisticClassifier,
    "knn": KNNClassifier,
    "mlp": MLPClassifier,
}


def make_classifier(name: str, **params: Any) -> Classifier:
    """A new, unfitted classifier by its registered name."""
    return build("classifier", CLASSIFIERS, name, params)
