"""Front metrics: APGR and CPT on known routers, AUC normalisation, budget look-ups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coserve.eval import metrics as M


def test_front_keeps_only_improving_points() -> None:
    xs, ys = M.front([1, 2, 3, 4, 2], [0.5, 0.4, 0.7, 0.6, 0.55])
    assert xs.tolist() == [1, 2, 3] and ys.tolist() == [0.5, 0.55, 0.7]


def test_the_front_is_the_points_that_beat_every_cheaper_one() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):  # ties in cost and in quality, and a missing value, on small grids
        n = int(rng.integers(0, 10))
        cost, quality = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n) / 3
        if n:
            cost[rng.integers(0, n)] = np.nan
        xs, ys = M.front(cost, quality)
        ok = np.isfinite(cost)
        expected = sorted({(c, q) for c, q in zip(cost[ok], quality[ok], strict=True)
                           if all(q > q2 for c2, q2 in zip(cost[ok], quality[ok], strict=True) if c2 < c)
                           and q == quality[ok][cost[ok] == c].max()})  # fmt: skip
        assert list(zip(xs.tolist(), ys.tolist(), strict=True)) == expected


def test_quality_at_budget_and_min_budget() -> None:
    cost, quality = [1.0, 3.0], [0.4, 0.8]
    assert M.quality_at_budget(cost, quality, 2.0) == pytest.approx(0.6)
    assert M.quality_at_budget(cost, quality, 10.0) == pytest.approx(0.8)
    assert math.isnan(M.quality_at_budget(cost, quality, 0.5))
    assert M.min_budget_for_quality(cost, quality, 0.7) == pytest.approx(2.5)
    assert M.min_budget_for_quality(cost, quality, 0.3) == pytest.approx(1.0)
    assert math.isnan(M.min_budget_for_quality(cost, quality, 0.9))


def test_auc_oracle_is_one_and_single_points_below() -> None:
    assert M.normalised_auc([1.0], [0.9], 1.0, 10.0, 0.9) == pytest.approx(1.0)
    # a router at half the oracle's quality everywhere scores 0.5
    assert M.normalised_auc([1.0, 10.0], [0.45, 0.45], 1.0, 10.0, 0.9) == pytest.approx(0.5)
    # nothing below the router's cheapest point: that part counts as 0
    assert M.normalised_auc([5.5], [0.9], 1.0, 10.0, 0.9) == pytest.approx(0.5, abs=1e-3)


def _sweep(order: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[list[float], list[float]]:
    """Operating points of sending the first k prompts of ``order`` to the strong model, k = 0..n."""
    n = len(order)
    fractions, qualities = [], []
    for k in range(n + 1):
        to_strong = np.zeros(n, dtype=bool)
        to_strong[order[:k]] = True
        fractions.append(k / n)
        qualities.append(float(np.where(to_strong, strong, weak).mean()))
    return fractions, qualities


def test_apgr_of_oracle_and_random() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    weak = np.ones(n)
    weak[:40] = 0.0  # the weak model fails 4% of prompts, the strong one never
    strong = np.ones(n)
    rng.shuffle(weak)
    q_w, q_s = weak.mean(), strong.mean()
    needed_first = np.argsort(weak, kind="stable")
    fr, q = _sweep(needed_first, weak, strong)
    assert M.apgr(fr, q, q_w, q_s) == pytest.approx(1 - 0.04 / 2, abs=1e-3)
    assert M.cpt(fr, q, q_w, q_s, 50) == pytest.approx(2.0, abs=0.11)
    assert M.cpt(fr, q, q_w, q_s, 95) == pytest.approx(3.8, abs=0.11)
    # random routing (its expected value): PGR grows linearly with the strong fraction
    fr = np.linspace(0, 1, 11).tolist()
    q = [q_w + f * (q_s - q_w) for f in fr]
    assert M.apgr(fr, q, q_w, q_s) == pytest.approx(0.5, abs=1e-6)
    assert M.cpt(fr, q, q_w, q_s, 80) == pytest.approx(80, abs=0.11)
    # one random draw stays near that
    fr, q = _sweep(rng.permutation(n), weak, strong)
    assert M.apgr(fr, q, q_w, q_s) == pytest.approx(0.5, abs=0.1)


def test_apgr_endpoints_always_reachable() -> None:
    assert M.apgr([], [], 0.2, 0.6) == pytest.approx(0.5)


def test_gap_closed_and_accuracy() -> None:
    assert M.oracle_gap_closed(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert M.category_accuracy(["a", "b", "b"], ["a", "b", "c"]) == pytest.approx(2 / 3)


def test_ece_of_perfectly_calibrated_is_small() -> None:
    proba = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.ece(proba, np.array([0, 1])) == pytest.approx(0.0)
