"""How far to trust the router: temperature scaling, calibration error, uncertainty and novelty.

* ``fit_temperature`` / ``apply_temperature``: one scalar T that makes a classifier's probabilities
  honest on held-out data (T > 1 softens an overconfident model).
* ``expected_calibration_error``: the gap between confidence and accuracy, binned.
* ``entropy``: per-prompt uncertainty in [0, 1].
* ``OODScorer``: how unlike every training prompt a prompt is (cosine distance to its nearest
  training prompts), with ``threshold_for`` to pick the cut-off from validation prompts.

This module knows nothing about experts, costs or which classifier produced the probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coserve.router.neighbours import NeighbourIndex

__all__ = ["OODScorer", "apply_temperature", "entropy", "expected_calibration_error", "fit_temperature"]

PROBA_FLOOR = 1e-12  # log(0) guard: probabilities are clipped to this before taking logs
T_BOUNDS = (0.05, 20.0)  # the temperature search interval


def _log_proba(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), PROBA_FLOOR, 1.0))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL of ``softmax(log(proba) / T)`` on labels ``y`` (int)."""
    from scipy.optimize import minimize_scalar

    logits = _log_proba(proba)
    rows = np.arange(len(logits))
    labels = np.asarray(y, dtype=np.int64)

    def nll(T: float) -> float:
        return float(-_log_softmax(logits / T)[rows, labels].mean())

    result = minimize_scalar(nll, bounds=T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(result.x)


def apply_temperature(proba: np.ndarray, T: float) -> np.ndarray:
    """``softmax(log(proba) / T)``, in the input's dtype."""
    dtype = np.asarray(proba).dtype if np.asarray(proba).dtype.kind == "f" else np.float64
    return np.exp(_log_softmax(_log_proba(proba) / T)).astype(dtype)


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Size-weighted mean |accuracy - confidence| over equal-width bins of the top probability."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # (i/n, (i+1)/n]
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    return float(gap.sum() / max(count.sum(), 1))


def entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row divided by log(K): 0 = certain, 1 = uniform."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] < 2:
        return np.zeros(len(proba))
    plogp = np.where(proba > 0, proba * np.log(np.where(proba > 0, proba, 1.0)), 0.0)
    return np.clip(-plogp.sum(axis=1) / np.log(proba.shape[1]), 0.0, 1.0)


class OODScorer:
    """Novelty of a prompt: 1 - mean cosine similarity to its k nearest training prompts (0 to 2)."""

    name = "ood"

    def __init__(self, k: int = 1, exact_below: int = 5000, ef: int = 64):
        self.k = k
        self.exact_below = exact_below  # training rows from which hnswlib replaces the exact search
        self.ef = ef  # hnswlib query beam width

    def fit(self, X: np.ndarray) -> OODScorer:
        self.vectors_ = np.asarray(X, dtype=np.float32)
        self.index_ = NeighbourIndex(self.vectors_, exact_below=self.exact_below, ef=self.ef)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """``[n]`` scores: 0 for a prompt seen in training, up to 2 for its opposite."""
        _, sims = self.index_.query(X, self.k)
        return np.clip(1.0 - sims.mean(axis=1), 0.0, 2.0).astype(np.float32)

    def threshold_for(self, X_val: np.ndarray, quantile: float = 0.99) -> float:
        """The score below which ``quantile`` of the (in-distribution) validation prompts fall."""
        return float(np.quantile(self.score(X_val), quantile))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Hyper-parameters (JSON) and the training rows (npz); the index is rebuilt on load."""
        return {"k": self.k, "exact_below": self.exact_below, "ef": self.ef}, {"vectors_": self.vectors_}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> OODScorer:
        return cls(**params).fit(arrays["vectors_"])
