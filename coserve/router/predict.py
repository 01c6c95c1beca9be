"""Per-expert quality predictors: prompt embedding -> expected score of each expert, in [0, 1].

Same estimator contract as the classifiers (``classify.py``), except ``fit(X, Y)`` takes ``Y`` as an
``[n, E]`` matrix of observed scores in [0, 1] with NaN where an expert was not run on a prompt;
NaN cells are ignored in fitting. ``predict(X)`` returns ``[n, E]`` expected scores clipped to [0, 1].
Four predictors: similarity-weighted kNN, matrix factorisation (prompt projection x expert
embedding), a one-hidden-layer MLP, and ridge regression (closed form), which the ``stack``
router fits on ``stack_design``: the category posterior beside the prompt's vector. Learned
state is plain arrays (npz), no pickle.
This module knows nothing about costs, budgets or category names: column e is expert e.
"""

from __future__ import annotations

from typing import Any, Protocol, Self

import numpy as np

from coserve.errors import ConfigError
from coserve.router.classify import SklearnMLPBase, mlp_arrays, mlp_forward, mlp_layers
from coserve.router.neighbours import NeighbourIndex
from coserve.router.registry import build

__all__ = [
    "PREDICTORS",
    "STACK_POSTERIOR_SCALE",
    "STACK_RIDGE_ALPHA",
    "KNNRegressor",
    "MFRegressor",
    "MLPRegressor",
    "Predictor",
    "RidgeRegressor",
    "make_predictor",
    "stack_design",
]

# Weight of the category posterior beside the prompt vector in the stack router's design matrix, and
# the stack's ridge penalty: the category carries the mean score, the vector and features move it per
# prompt, shrunk hard (grouped CV on llmrouter chose these from {3, 10, 30} x {30, 100, 300}: docs/eval.md).
STACK_POSTERIOR_SCALE = 10.0
STACK_RIDGE_ALPHA = 100.0


class Predictor(Protocol):
    """What the router needs of a quality predictor (every entry of ``PREDICTORS``)."""

    name: str
    n_experts_: int

    def fit(self, X: np.ndarray, Y: np.ndarray) -> Self: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self: ...


def _outcomes(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float32 ``X``, float64 ``Y`` and its observed-cell mask; every expert needs a score."""
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or len(Y) != len(X):
        raise ConfigError(f"outcomes must be [n_prompts, n_experts] with {len(X)} rows, got shape {Y.shape}")
    observed = ~np.isnan(Y)
    empty = np.flatnonzero(~observed.any(axis=0))
    if len(empty):
        raise ConfigError(f"experts {empty.tolist()} have no observed score; a predictor cannot learn them")
    if np.any((Y[observed] < 0) | (Y[observed] > 1)):
        raise ConfigError("observed scores must lie in [0, 1]")
    return X, Y, observed


def _column_means(Y: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Mean observed score of each expert."""
    return np.where(observed, Y, 0.0).sum(axis=0) / observed.sum(axis=0)


# -- kNN ---------------------------------------------------------------------------------------------
class KNNRegressor:
    """Similarity-weighted mean of the k most similar training prompts' observed scores, per expert."""

    name = "knn"

    def __init__(self, k: int = 20, exact_below: int = 5000, ef: int = 64):
        self.k = k
        self.exact_below = exact_below  # training rows from which hnswlib replaces the exact search
        self.ef = ef  # hnswlib query beam width (raised to k when smaller)

    def fit(self, X: np.ndarray, Y: np.ndarray) -> KNNRegressor:
        X, Y64, observed = _outcomes(X, Y)
        self.vectors_ = X
        self.scores_ = Y64.astype(np.float32)  # NaN kept: the mask is recomputed where needed
        self.n_experts_ = Y64.shape[1]
        self.prior_ = _column_means(Y64, observed).astype(np.float32)
        self.index_ = NeighbourIndex(self.vectors_, exact_below=self.exact_below, ef=self.ef)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        idx, sims = self.index_.query(X, self.k)
        # Opposed neighbours weigh nothing; the 1e-6 floor turns an all-opposed set into a plain mean.
        weights = (np.maximum(sims, 0.0) + 1e-6)[:, :, None]  # [n, k, 1]
        neighbour_scores = self.scores_[idx]  # [n, k, E]
        seen = ~np.isnan(neighbour_scores)
        total = (weights * np.where(seen, neighbour_scores, 0.0)).sum(axis=1)
        mass = (weights * seen).sum(axis=1)
        # An expert none of the neighbours was run on gets its mean over all training prompts.
        mean = np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), self.prior_)
        return np.clip(mean, 0.0, 1.0).astype(np.float32)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyper-parameters (JSON) and the training rows and scores (npz); the index is rebuilt on load."""
        params = {"k": self.k, "exact_below": self.exact_below, "ef": self.ef}
        return params, {"vectors_": self.vectors_, "scores_": self.scores_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KNNRegressor:
        model = cls(**params)
        X = np.asarray(arrays["vectors_"], dtype=np.float32)
        Y = np.asarray(arrays["scores_"], dtype=np.float32)
        model.vectors_, model.scores_, model.n_experts_ = X, Y, Y.shape[1]
        model.prior_ = _column_means(Y.astype(np.float64), ~np.isnan(Y)).astype(np.float32)
        model.index_ = NeighbourIndex(X, exact_below=model.exact_below, ef=model.ef)
        return model


# -- matrix factorisation ------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + exp(-z))


class MFRegressor:
    """score(x, e) = sigmoid((W x) · v_e + b_e), fitted by full-batch Adam on the observed cells.

    The loss is binary cross-entropy with soft targets (scores in [0, 1]) averaged over observed
    cells, plus ``l2 / 2 * (|W|² + |V|²)``. Cross-entropy, not MSE: its gradient in the logit is
    ``p - y`` and does not vanish when a sigmoid saturates. One epoch is one Adam step.
    """

    name = "mf"

    def __init__(self, dim: int = 32, epochs: int = 200, lr: float = 0.01, l2: float = 1e-3, seed: int = 0):
        self.dim = dim  # width of the shared prompt/expert space
        self.epochs = epochs
        self.lr = lr
        self.l2 = l2
        self.seed = seed

    def fit(self, X: np.ndarray, Y: np.ndarray) -> MFRegressor:
        X32, Y64, observed = _outcomes(X, Y)
        X64 = X32.astype(np.float64)
        d = X64.shape[1]
        E = Y64.shape[1]
        rng = np.random.default_rng(self.seed)
        prior = np.clip(_column_means(Y64, observed), 1e-3, 1 - 1e-3)
        params = {
            "W": rng.normal(0.0, 1.0 / np.sqrt(d), size=(self.dim, d)),
            "V": rng.normal(0.0, 1.0 / np.sqrt(self.dim), size=(E, self.dim)),
            "b": np.log(prior / (1 - prior)),  # start at each expert's mean score
        }
        target = np.where(observed, Y64, 0.0)
        weight = observed / observed.sum()
        moments = {key: (np.zeros_like(value), np.zeros_like(value)) for key, value in params.items()}
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for step in range(1, self.epochs + 1):
            U = X64 @ params["W"].T  # [n, dim]
            P = _sigmoid(U @ params["V"].T + params["b"])  # [n, E]
            G = weight * (P - target)  # d loss / d logit, zero on missing cells
            grads = {
                "W": (G @ params["V"]).T @ X64 + self.l2 * params["W"],
                "V": G.T @ U + self.l2 * params["V"],
                "b": G.sum(axis=0),
            }
            for key, grad in grads.items():
                m, v = moments[key]
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad * grad
                m_hat = m / (1 - beta1**step)
                v_hat = v / (1 - beta2**step)
                params[key] -= self.lr * m_hat / (np.sqrt(v_hat) + eps)
        self.W_ = params["W"].astype(np.float32)
        self.V_ = params["V"].astype(np.float32)
        self.b_ = params["b"].astype(np.float32)
        self.n_experts_ = E
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        U = np.asarray(X, dtype=np.float32) @ self.W_.T
        return np.clip(_sigmoid(U @ self.V_.T + self.b_), 0.0, 1.0).astype(np.float32)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyper-parameters (JSON) and the projection, expert embeddings and biases (npz)."""
        params = {"dim": self.dim, "epochs": self.epochs, "lr": self.lr, "l2": self.l2, "seed": self.seed}
        return params, {"W_": self.W_, "V_": self.V_, "b_": self.b_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> MFRegressor:
        model = cls(**params)
        model.W_ = np.asarray(arrays["W_"], dtype=np.float32)
        model.V_ = np.asarray(arrays["V_"], dtype=np.float32)
        model.b_ = np.asarray(arrays["b_"], dtype=np.float32)
        model.n_experts_ = len(model.b_)
        return model


# -- MLP ---------------------------------------------------------------------------------------------
class MLPRegressor(SklearnMLPBase):
    """Multi-output one-hidden-layer ReLU network, fitted with scikit-learn, applied with numpy."""

    name = "mlp"

    def fit(self, X: np.ndarray, Y: np.ndarray) -> MLPRegressor:
        from sklearn.neural_network import MLPRegressor as SklearnMLP

        X32, Y64, observed = _outcomes(X, Y)
        complete = observed.all(axis=1)
        if complete.sum() >= max(20, len(Y64) // 2):  # enough fully observed prompts: train on those
            X_fit, Y_fit = X32[complete], Y64[complete]
        else:  # too few: fill each missing cell with its expert's mean score
            X_fit, Y_fit = X32, np.where(observed, Y64, _column_means(Y64, observed))
        # A 10% validation split of fewer than 50 rows is noise.
        self.layers_ = self._fit_layers(SklearnMLP, X_fit, Y_fit, early_stopping=len(X_fit) >= 50)
        self.n_experts_ = Y64.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = mlp_forward(X, self.layers_)
        return np.clip(out.reshape(len(out), self.n_experts_), 0.0, 1.0).astype(np.float32)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyper-parameters (JSON) and the layer weights (npz)."""
        return self._params(), mlp_arrays(self.layers_)

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPRegressor:
        model = cls(**params)
        model.layers_ = mlp_layers(arrays)
        model.n_experts_ = model.layers_[-1][1].shape[0]
        return model


# -- ridge -------------------------------------------------------------------------------------------
class RidgeRegressor:
    """Per-expert linear regression with an L2 penalty, solved in closed form for all experts at once.

    Missing cells are filled with their expert's mean score before fitting (the fill carries no
    per-prompt signal, so it only shrinks towards the mean). The intercept is not penalised.
    """

    name = "ridge"

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha  # L2 penalty on the weights (the stack router uses STACK_RIDGE_ALPHA)

    def fit(self, X: np.ndarray, Y: np.ndarray) -> RidgeRegressor:
        X32, Y64, observed = _outcomes(X, Y)
        X64 = X32.astype(np.float64)
        filled = np.where(observed, Y64, _column_means(Y64, observed))
        x_mean, y_mean = X64.mean(axis=0), filled.mean(axis=0)
        Xc = X64 - x_mean
        gram = Xc.T @ Xc + self.alpha * np.eye(X64.shape[1])
        self.coef_ = np.linalg.solve(gram, Xc.T @ (filled - y_mean)).astype(np.float32)  # [d, E]
        self.intercept_ = (y_mean - x_mean @ self.coef_).astype(np.float32)
        self.n_experts_ = Y64.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(X, dtype=np.float32) @ self.coef_ + self.intercept_
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The penalty (JSON) and the weights and intercepts (npz)."""
        return {"alpha": self.alpha}, {"coef_": self.coef_, "intercept_": self.intercept_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> RidgeRegressor:
        model = cls(**params)
        model.coef_ = np.asarray(arrays["coef_"], dtype=np.float32)
        model.intercept_ = np.asarray(arrays["intercept_"], dtype=np.float32)
        model.n_experts_ = len(model.intercept_)
        return model


def stack_design(posterior: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The stack router's inputs: ``[STACK_POSTERIOR_SCALE * posterior, X]`` (a one-hot category
    in training, the calibrated category posterior when routing)."""
    return np.hstack([STACK_POSTERIOR_SCALE * np.asarray(posterior, dtype=np.float32), np.asarray(X, np.float32)])


PREDICTORS: dict[str, type[Predictor]] = {
    "knn": KNNRegressor,
    "mf": MFRegressor,
    "mlp": MLPRegressor,
    "ridge": RidgeRegressor,
}


def make_predictor(name: str, **params: Any) -> Predictor:
    """A new, unfitted quality predictor by its registered name."""
    return build("predictor", PREDICTORS, name, params)
