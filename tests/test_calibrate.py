"""Temperature scaling, calibration error, entropy and the out-of-distribution scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coserve.router.calibrate import (
    OODScorer,
    apply_temperature,
    entropy,
    expected_calibration_error,
    fit_temperature,
)


def calibrated(n: int = 6000, K: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, their softmax, and labels drawn from that softmax (so it is calibrated by construction)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, K))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (rng.random((n, 1)) > proba.cumsum(axis=1)).sum(axis=1)
    return logits, proba, y


def test_fit_temperature_undoes_a_sharpening() -> None:
    logits, proba, y = calibrated()
    sharp = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)  # temperature 1/2
    T = fit_temperature(sharp, y)
    assert T == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(proba, y) == pytest.approx(1.0, rel=0.1)
    np.testing.assert_allclose(apply_temperature(sharp, 2.0), proba, atol=1e-6)
    assert expected_calibration_error(apply_temperature(sharp, T), y) < 0.03


def test_expected_calibration_error_separates_honest_from_overconfident() -> None:
    _, proba, y = calibrated()
    assert expected_calibration_error(proba, y) < 0.03
    overconfident = apply_temperature(proba, 1 / 3)
    assert expected_calibration_error(overconfident, y) > 0.1


def test_expected_calibration_error_by_hand() -> None:
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # Bins (width 0.5): {0.9, 0.9, 0.6}: accuracy 2/3, confidence 0.8; {0.7} is in the same bin -> all 4:
    # accuracy 3/4, confidence 0.775.
    assert expected_calibration_error(proba, y, n_bins=2) == pytest.approx(0.025)
    # Ten bins: 0.9 (acc 1/2, gap 0.4, weight 1/2), 0.6 (gap 0.4), 0.7 (gap 0.3).
    assert expected_calibration_error(proba, y, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3)


def test_entropy_is_normalised() -> None:
    proba = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(entropy(proba), [1.0, 0.0, 0.5], atol=1e-12)


def test_ood_scorer(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 32))
    X = centres[rng.integers(0, 3, 300)] + 0.2 * rng.normal(size=(300, 32))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    scorer = OODScorer().fit(X[:250])
    seen = scorer.score(X[:250])
    assert seen.shape == (250,) and seen.max() < 1e-5
    far = rng.normal(size=(50, 32)).astype(np.float32)
    assert scorer.score(far).min() > scorer.score(X[250:]).max()
    one_topic = OODScorer().fit(X[:1])
    assert one_topic.score(-X[:1])[0] == pytest.approx(2.0, abs=1e-5)  # the opposite prompt scores 2
    threshold = scorer.threshold_for(X[250:], quantile=0.9)
    assert np.mean(scorer.score(X[250:]) <= threshold) == pytest.approx(0.9, abs=0.03)

    params, arrays = scorer.get_state()
    np.savez(tmp_path / "a.npz", **arrays)  # type: ignore[arg-type]
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        loaded = OODScorer.from_state(json.loads(json.dumps(params)), {k: data[k] for k in data.files})
    assert np.array_equal(loaded.score(far), scorer.score(far))
    assert OODScorer(k=5).fit(X).score(X[:10]).min() > 0  # k > 1 averages over other prompts too
