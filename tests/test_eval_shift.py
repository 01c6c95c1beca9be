"""Re-weighted category mixes (coserve/eval/shift.py) on a four-row table worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coserve.eval import shift as S

CATEGORIES = ["a", "a", "b", "c"]
COST = np.array([1.0, 5.0, 10.0])
Y = np.array(
    [
        [1.0, 1.0, 1.0],  # a
        [0.0, 1.0, 1.0],  # a
        [0.0, 0.0, 1.0],  # b
        [1.0, 0.0, np.nan],  # c: the dearest expert was not run on it
    ]
)


def test_observed_mix_and_row_weights() -> None:
    assert S.observed_mix(CATEGORIES) == {"a": 0.5, "b": 0.25, "c": 0.25}
    np.testing.assert_allclose(S.row_weights(CATEGORIES, {"a": 0.5, "b": 0.25, "c": 0.25}), [0.25] * 4)
    # shares are normalised; a category the mix leaves out (c) weighs nothing; d has no share and no row
    np.testing.assert_allclose(S.row_weights(CATEGORIES, {"a": 2, "b": 1, "d": 0}), [1 / 3, 1 / 3, 1 / 3, 0])
    with pytest.raises(ValueError, match="'d'"):
        S.row_weights(CATEGORIES, {"a": 1, "d": 1})
    with pytest.raises(ValueError, match="non-negative"):
        S.row_weights(CATEGORIES, {"a": -1, "b": 2})


def test_tilted_mix_weighs_the_named_categories_up() -> None:
    mix = S.tilted_mix({"a": 0.5, "b": 0.25, "c": 0.25}, ["b"], 3.0)  # raw 0.5, 0.75, 0.25 of 1.5
    assert mix == pytest.approx({"a": 1 / 3, "b": 1 / 2, "c": 1 / 6})
    with pytest.raises(ValueError, match="'z'"):
        S.tilted_mix({"a": 1.0}, ["z"], 2.0)


def test_dirichlet_mixes_are_seeded_and_centred_on_the_base() -> None:
    base = {"a": 0.5, "b": 0.3, "c": 0.2}
    draws = S.dirichlet_mixes(base, 10.0, 4000, seed=3)
    assert draws[:5] == S.dirichlet_mixes(base, 10.0, 5, seed=3)
    assert draws[0] != S.dirichlet_mixes(base, 10.0, 1, seed=4)[0]
    assert all(sorted(d) == ["a", "b", "c"] and math.isclose(sum(d.values()), 1.0) for d in draws)
    # the mean of 4000 draws is the base (sd of each mean share < 0.0025); one draw's sd ~ 0.15 at 10
    for k, share in base.items():
        values = [d[k] for d in draws]
        assert abs(np.mean(values) - share) < 0.01
        assert np.std(values) == pytest.approx(math.sqrt(share * (1 - share) / 11), rel=0.1)
    tight = S.dirichlet_mixes(base, 1e7, 3, seed=0)  # a huge concentration draws the base itself
    assert all(d == pytest.approx(base, abs=1e-3) for d in tight)


def test_weighted_means_leave_missing_scores_out() -> None:
    w = np.full(4, 0.25)
    assert S.weighted_quality(Y, np.array([2, 2, 2, 2]), w) == pytest.approx(1.0)  # row c missing
    assert S.weighted_quality(Y, np.array([0, 0, 0, 2]), w) == pytest.approx(1 / 3)
    assert S.weighted_cost(COST, np.array([0, 1, 2, 2]), w) == pytest.approx((1 + 5 + 10 + 10) / 4)


def test_best_single_is_chosen_again_per_mix() -> None:
    even = S.row_weights(CATEGORIES, {"a": 1, "b": 1, "c": 1})  # 1/6, 1/6, 1/3, 1/3
    # expert 0: 1/6 + 1/3 = 0.5; expert 1: 1/6 + 1/6 = 1/3; expert 2: 1 on the rows it was run on
    assert S.best_single(Y, COST, even, 10.0) == (2, pytest.approx(1.0))
    assert S.best_single(Y, COST, even, 5.0) == (0, pytest.approx(0.5))
    no_c = S.row_weights(CATEGORIES, {"a": 0.5, "b": 0.5})  # 0.25, 0.25, 0.5, 0
    assert S.best_single(Y, COST, no_c, 5.0) == (1, pytest.approx(0.5))  # now expert 1 (0.5) beats 0 (0.25)
    only_b = S.row_weights(CATEGORIES, {"b": 1})
    assert S.best_single(Y, COST, only_b, 5.0) == (0, 0.0)  # a tie at 0 goes to the cheaper
    with pytest.raises(ValueError, match="at most 0"):
        S.best_single(Y, COST, even, 0.5)


def test_score_mix_reweights_the_front() -> None:
    all_cheap = np.array([0, 0, 0, 0])
    routed = np.array([0, 1, 2, 0])
    no_c = S.row_weights(CATEGORIES, {"a": 0.5, "b": 0.5})  # 0.25, 0.25, 0.5, 0
    # all_cheap: cost 1, quality 0.25; routed: cost 0.25 + 1.25 + 5 = 6.5, quality 1.0
    # at 3.75 B, halfway from 1 to 6.5: 0.625
    score = S.score_mix(Y, COST, [all_cheap, routed], no_c, [3.75, 10.0])
    assert score.router[3.75] == pytest.approx(0.625) and score.router[10.0] == pytest.approx(1.0)
    assert math.isnan(S.score_mix(Y, COST, [routed], no_c, [3.75]).router[3.75])  # below its only point
    assert score.single[10.0] == (2, pytest.approx(1.0)) and score.single[3.75] == (0, pytest.approx(0.25))
    # the same points on the rows' own mix: routed costs (1 + 5 + 10 + 1) / 4 = 4.25, scores 1.0
    even = S.score_mix(Y, COST, [all_cheap, routed], np.full(4, 0.25), [3.75])
    assert even.router[3.75] == pytest.approx(0.5 + 0.5 * (3.75 - 1) / (4.25 - 1))


def test_spread_reports_the_tenth_percentile() -> None:
    assert S.spread(range(10)) == {"mean": 4.5, "worst_decile": pytest.approx(0.9), "worst": 0.0, "max": 9.0}
