"""Conformance of every registered category classifier, and the kNN classifier's two search paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from estimator_state import round_trip

from coserve.errors import ConfigError
from coserve.router.classify import CLASSIFIERS, KNNClassifier, make_classifier

NAMES = ["zeta", "alpha", "mid", "beta"]  # first-appearance order differs from the sorted classes_


def clusters(n: int, k: int = 4, dim: int = 16, spread: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around k random unit centres, labelled by centre name (fixed centres per k, dim)."""
    centres = np.random.default_rng(1000 + k).normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, k, size=n)
    X = centres[which] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.asarray(NAMES[:k])[which]


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_conformance(name: str, tmp_path: Path) -> None:
    X, y = clusters(300, seed=1)
    X_test, y_test = clusters(200, seed=2)
    model = make_classifier(name)
    assert not [a for a in vars(model) if a.endswith("_")], "learned attributes before fit"
    assert model.fit(X, y) is model
    assert [a for a in vars(model) if a.endswith("_")]
    assert model.classes_.tolist() == sorted(set(y.tolist()))

    proba = model.predict_proba(X_test)
    assert proba.shape == (len(X_test), 4)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # Columns follow classes_: column j is highest, on average, on the examples of classes_[j].
    for j, label in enumerate(model.classes_):
        assert proba[y_test == label].mean(axis=0).argmax() == j
    assert np.array_equal(model.predict(X_test), model.classes_[proba.argmax(axis=1)])
    assert (model.predict(X_test) == y_test).mean() >= 0.95

    params, arrays = round_trip(model, tmp_path)
    loaded = type(model).from_state(params, arrays)
    assert np.array_equal(loaded.predict_proba(X_test), proba)
    assert np.array_equal(loaded.classes_, model.classes_)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_binary(name: str) -> None:
    X, y = clusters(200, k=2, seed=3)
    X_test, y_test = clusters(100, k=2, seed=4)
    model = make_classifier(name).fit(X, y)
    proba = model.predict_proba(X_test)
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (model.predict(X_test) == y_test).mean() >= 0.95


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_needs_two_classes(name: str) -> None:
    X, _ = clusters(20)
    with pytest.raises(ConfigError):
        make_classifier(name).fit(X, ["only"] * 20)


def test_make_classifier_errors() -> None:
    with pytest.raises(ConfigError, match="unknown classifier"):
        make_classifier("forest")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_classifier("knn", depth=3)
    assert make_classifier("knn", k=3).k == 3  # type: ignore[attr-defined]


def test_knn_probabilities_are_never_zero() -> None:
    X, y = clusters(100, spread=0.05)
    proba = KNNClassifier(k=5).fit(X, y).predict_proba(X)
    assert proba.min() > 0
    assert proba.max(axis=1).min() > 0.9  # tight clusters: the smoothing is small


def test_knn_hnsw_path_matches_exact_path(tmp_path: Path) -> None:
    X, y = clusters(800, seed=5, spread=0.4)
    X_test, _ = clusters(300, seed=6, spread=0.4)
    exact = KNNClassifier(k=15).fit(X, y)
    approx = KNNClassifier(k=15, exact_below=100).fit(X, y)
    assert not exact.index_.uses_hnsw and approx.index_.uses_hnsw
    assert np.array_equal(approx.predict(X_test), exact.predict(X_test))
    np.testing.assert_allclose(approx.predict_proba(X_test), exact.predict_proba(X_test), atol=1e-5)

    params, arrays = round_trip(approx, tmp_path)
    reloaded = KNNClassifier.from_state(params, arrays)
    assert reloaded.index_.uses_hnsw
    assert np.array_equal(reloaded.predict_proba(X_test), approx.predict_proba(X_test))
