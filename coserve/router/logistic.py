"""The small logistic regression the cascade's learned parts share (the answer check, the start gate):
features standardised with the training rows' mean and spread, fitted by scikit-learn, kept as plain
arrays, and written as one JSON file (no pickle). This module knows nothing about what the features mean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ScaledLogistic",
    "fit_good",
    "fit_scaled_logistic",
    "probabilities",
    "read_arrays",
    "state_of",
    "write_state",
]

ScaledLogistic = tuple[np.ndarray, np.ndarray, np.ndarray, float]  # mean, scale, coef, intercept


def fit_scaled_logistic(X: np.ndarray, y: np.ndarray, C: float) -> ScaledLogistic:
    """Mean and scale of ``X``'s columns (a constant column: scale 1), then the L2-regularised
    logistic regression of ``y`` on the standardised columns."""
    from sklearn.linear_model import LogisticRegression

    mean = X.mean(axis=0)
    scale = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    model = LogisticRegression(C=C, max_iter=1000).fit((X - mean) / scale, y)
    return mean, scale, model.coef_[0].astype(float), float(model.intercept_[0])


def fit_good(X: np.ndarray, scores: Any, good: float, C: float, model: str, of: str = "") -> ScaledLogistic:
    """``fit_scaled_logistic`` of "score >= ``good``"; a ConfigError naming ``model`` (and whose answers,
    ``of``) when the scores are all good or all bad (a logistic regression needs two classes)."""
    from coserve.errors import ConfigError

    y = (np.asarray(scores, dtype=float) >= good).astype(int)
    if len(set(y.tolist())) < 2:
        whose = f" of {of}" if of else ""
        raise ConfigError(f"{model} needs both good and bad answers{whose} in its training data")
    return fit_scaled_logistic(X, y, C)


def probabilities(X: np.ndarray, fitted: ScaledLogistic) -> np.ndarray:
    """[n] the fitted model's P(good) of each row of ``X``."""
    mean, scale, coef, intercept = fitted
    z = ((X - mean) / scale) @ coef + intercept
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def write_state(path: str | Path, state: dict[str, Any], **extra: Any) -> None:
    """``state`` and ``extra`` (figures, provenance) as one indented JSON file; folders made as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**state, **extra}, indent=2) + "\n")


def state_of(C: float, good: float, fitted: ScaledLogistic) -> dict[str, Any]:
    """The JSON-ready hyper-parameters and arrays of a fitted model."""
    mean, scale, coef, intercept = fitted
    return {
        "C": C,
        "good": good,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": coef.tolist(),
        "intercept": intercept,
    }


def read_arrays(state: dict[str, Any]) -> ScaledLogistic:
    """A fitted model's arrays from ``state_of``'s keys (KeyError, ValueError, TypeError when malformed)."""
    return (
        np.asarray(state["mean"], float),
        np.asarray(state["scale"], float),
        np.asarray(state["coef"], float),
        float(state["intercept"]),
    )
