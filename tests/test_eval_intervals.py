"""Paired bootstrap intervals in ``coserve eval``'s report: each operating point's quality and margins, and
each router's headline margin, with plain numbers and on the harness's synthetic outcome data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_eval_harness import FAST, write_separable

from coserve.bootstrap import interval, resample_means
from coserve.eval.data import ExpertCosts, load_costs, load_outcomes
from coserve.eval.harness import baselines, evaluate
from coserve.eval.intervals import add_intervals
from coserve.router.embed import HashingEmbedder

EXPERTS = ["small", "mid", "big"]
COSTS = ExpertCosts(tuple(EXPERTS), np.array([1.0, 5.0, 10.0]), np.array([0.1, 0.5, 2.0]), "test")


def _scored(n: int, seed: int = 0) -> np.ndarray:
    """Noisy 0/1 scores of three experts on ``n`` prompts: big right 75% of the time, mid 60%, small 50%."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 3)) < np.array([0.5, 0.6, 0.75])).astype(float)


def _intervals(Y: np.ndarray, choices: list[np.ndarray]) -> tuple[list[dict], dict]:
    base = baselines(Y, EXPERTS, COSTS, COSTS.params_b)
    rows = np.arange(len(Y))
    points = [
        {"axis": "params", "quality": Y[rows, c].mean(), "avg_params_b": COSTS.params_b[c].mean()} for c in choices
    ]
    metrics = {"quality_at_best_single_budget": max(p["quality"] for p in points if p["avg_params_b"] <= 10.0)}
    add_intervals(points, choices, metrics, Y, COSTS, base, EXPERTS, "params")
    return points, metrics


def test_a_router_that_is_one_expert_has_a_zero_margin_over_it() -> None:
    Y = _scored(300)
    points, metrics = _intervals(Y, [np.full(300, 2)])  # always big, the best single expert
    assert points[0]["best_single"] == {"expert": "big", "margin": 0.0, "interval_95": [0.0, 0.0]}
    assert points[0]["best_single_affordable"] == {"expert": "big", "margin": 0.0, "interval_95": [0.0, 0.0]}
    assert metrics["margin_at_best_single_budget"]["interval_95"] == [0.0, 0.0]
    low, high = points[0]["quality_interval_95"]
    assert low < points[0]["quality"] < high  # the quality itself still varies with the prompts drawn


def test_intervals_hold_the_estimate_and_narrow_with_more_prompts() -> None:
    widths = []
    for n in (100, 2500):
        Y = _scored(n, seed=n)
        rng = np.random.default_rng(1)
        choices = [rng.integers(0, 3, n), np.where(rng.random(n) < 0.5, 1, 2)]
        points, metrics = _intervals(Y, choices)
        for p in points:
            low, high = p["quality_interval_95"]
            assert low <= p["quality"] <= high
            m = p["best_single"]
            assert (
                m["interval_95"][0] <= m["margin"] <= m["interval_95"][1] and m["interval_95"][0] < m["interval_95"][1]
            )
        headline = metrics["margin_at_best_single_budget"]
        assert headline["interval_95"][0] <= headline["margin"] <= headline["interval_95"][1]
        widths.append(np.diff(points[0]["quality_interval_95"])[0])
    # 25 times the prompts: about a fifth of the width (1/sqrt(25))
    assert widths[1] < widths[0] / 3


def test_the_affordable_expert_is_the_best_the_points_cost_pays_for() -> None:
    Y = _scored(200)
    points, _ = _intervals(Y, [np.where(np.arange(200) % 2 == 0, 0, 1)])  # 3 B on average: small or mid
    assert points[0]["best_single"]["expert"] == "big" and points[0]["best_single_affordable"]["expert"] == "small"


def test_the_bootstrap_leaves_missing_scores_out_and_is_seeded() -> None:
    values = np.array([1.0, np.nan, 0.0, 1.0])
    means = resample_means(values, 500, 3)
    rows = np.random.default_rng(3).integers(0, 4, size=(500, 4))  # the same draw, gathered naively
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        naive = np.nanmean(values[rows], axis=1)  # NaN where a resample drew the missing score only
    assert np.allclose(means, naive, equal_nan=True) and np.isnan(means).sum() == np.isnan(naive).sum()
    assert interval(np.full(10, np.nan)) != interval(np.full(10, np.nan))  # nan: undefined both ends
    with pytest.raises(ValueError):
        resample_means(np.array([]), 10, 0)


def test_every_point_of_the_report_has_intervals(tmp_path: Path) -> None:
    data, experts = write_separable(tmp_path)
    outcomes, _ = load_outcomes(data)
    options = {"folds": 3, "seed": 0, "embedder": HashingEmbedder(), "cache": tmp_path, "routers": FAST}
    report = evaluate(outcomes, None, load_costs(experts), **options)
    assert report["meta"]["intervals"] == {"resamples": 2000, "seed": 0, "level": 0.95}
    for entry in report["routers"].values():
        for p in entry["points"]:
            low, high = p["quality_interval_95"]
            assert low <= p["quality"] <= high and p["best_single"]["expert"] == "big"
        m = entry["metrics"]
        if m["quality_at_best_single_budget"] is not None:
            low, high = m["margin_at_best_single_budget"]["interval_95"]
            assert low <= m["margin_at_best_single_budget"]["margin"] <= high
    # the separable set: the map router's lead over big at big's cost is clear of zero on 60 prompts
    assert report["routers"]["map-logistic"]["metrics"]["margin_at_best_single_budget"]["interval_95"][0] > 0
    plain = evaluate(outcomes, None, load_costs(experts), intervals=False, **options)
    assert (
        plain["meta"]["intervals"] is None and "quality_interval_95" not in plain["routers"]["prompt-knn"]["points"][0]
    )
    assert (
        plain["routers"]["prompt-knn"]["points"][0]["quality"]
        == report["routers"]["prompt-knn"]["points"][0]["quality"]
    )
