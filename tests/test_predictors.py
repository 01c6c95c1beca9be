"""Conformance of every registered per-expert quality predictor, and the kNN predictor's two paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from estimator_state import round_trip

from coserve.errors import ConfigError
from coserve.router.predict import PREDICTORS, KNNRegressor, make_predictor

# Expected score of expert e on prompts of cluster c: the best expert differs by cluster.
QUALITY = np.array([[0.9, 0.5, 0.2], [0.3, 0.8, 0.4], [0.2, 0.3, 0.7], [0.6, 0.1, 0.95]])
BEST = QUALITY.argmax(axis=1)


def outcomes(n: int, seed: int, missing: float = 0.15, dim: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompts around 4 fixed centres, noisy scores per expert with a fraction of cells missing (NaN)."""
    centres = np.random.default_rng(99).normal(size=(len(QUALITY), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, len(QUALITY), size=n)
    X = centres[cluster] + 0.3 * rng.normal(size=(n, dim)) / np.sqrt(dim)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = np.clip(QUALITY[cluster] + 0.1 * rng.normal(size=(n, QUALITY.shape[1])), 0, 1)
    Y[rng.random(Y.shape) < missing] = np.nan
    return X.astype(np.float32), Y.astype(np.float32), cluster


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_predictor_conformance(name: str, tmp_path: Path) -> None:
    X, Y, _ = outcomes(400, seed=1)
    X_test, _, cluster = outcomes(200, seed=2)
    assert np.isnan(Y).any()
    model = make_predictor(name)
    assert not [a for a in vars(model) if a.endswith("_")], "learned attributes before fit"
    assert model.fit(X, Y) is model
    assert model.n_experts_ == 3

    pred = model.predict(X_test)
    assert pred.shape == (200, 3)
    assert np.isfinite(pred).all() and pred.min() >= 0 and pred.max() <= 1
    assert (pred.argmax(axis=1) == BEST[cluster]).mean() >= 0.9
    assert np.abs(pred - QUALITY[cluster]).mean() < 0.12

    params, arrays = round_trip(model, tmp_path)
    loaded = type(model).from_state(params, arrays)
    assert loaded.n_experts_ == 3
    assert np.array_equal(loaded.predict(X_test), pred)


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_predictor_mostly_missing_outcomes(name: str) -> None:
    X, Y, _ = outcomes(500, seed=3, missing=0.6)  # few prompts have every expert's score
    X_test, _, cluster = outcomes(200, seed=4)
    pred = make_predictor(name).fit(X, Y).predict(X_test)
    assert pred.min() >= 0 and pred.max() <= 1
    assert (pred.argmax(axis=1) == BEST[cluster]).mean() >= 0.8


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_predictor_rejects_expert_without_scores(name: str) -> None:
    X, Y, _ = outcomes(50, seed=5)
    Y[:, 1] = np.nan
    with pytest.raises(ConfigError, match=r"experts \[1\]"):
        make_predictor(name).fit(X, Y)


def test_make_predictor_errors() -> None:
    with pytest.raises(ConfigError, match="unknown predictor"):
        make_predictor("forest")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_predictor("mf", depth=3)


def test_knn_regressor_weights_by_similarity_and_skips_missing_cells() -> None:
    X = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)
    Y = np.array([[1.0, np.nan], [0.0, 0.2], [0.5, 0.6]], dtype=np.float32)
    model = KNNRegressor(k=2).fit(X, Y)
    # Neighbours of row 0: itself (similarity 1) and row 1 (0.8); its own expert-1 cell is missing.
    np.testing.assert_allclose(model.predict(X[:1]), [[1.0 / 1.8, 0.2]], atol=1e-5)
    # With k=1 no neighbour has an expert-1 score: the expert's mean over all prompts stands in.
    np.testing.assert_allclose(KNNRegressor(k=1).fit(X, Y).predict(X[:1]), [[1.0, 0.4]], atol=1e-6)


def test_knn_regressor_hnsw_path_matches_exact_path(tmp_path: Path) -> None:
    X, Y, _ = outcomes(800, seed=6)
    X_test, _, _ = outcomes(200, seed=7)
    exact = KNNRegressor(k=20).fit(X, Y)
    approx = KNNRegressor(k=20, exact_below=100).fit(X, Y)
    assert not exact.index_.uses_hnsw and approx.index_.uses_hnsw
    np.testing.assert_allclose(approx.predict(X_test), exact.predict(X_test), atol=1e-5)
    params, arrays = round_trip(approx, tmp_path)
    assert np.array_equal(KNNRegressor.from_state(params, arrays).predict(X_test), approx.predict(X_test))
