"""Session 10's settings of the online router, exact values derived by hand: the mix-jump test that hands the
feed-forward weight to the short window, the per-expert offset, and re-solving the feed-forward at an alarm."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.config_routing import OnlineSettings
from coserve.router.online import ChangeSettings, OnlineRouter, ScorePosterior, resume
from coserve.router.online_mix import RecentMix, total_variation

# Two categories, a cheap expert (cost 1) and a dear one (cost 3), target 2: scaled costs 0.5 and 1.5 (the
# example of tests/test_drift.py). Category 0 turns cheap at weight 0.4, category 1 at 0.7; a mix with at
# most half of category 1 needs 0.4 (the map [cheap, dear] costs 0.5 (1 - p) + 1.5 p <= 1), more needs 0.7.
MEANS = np.array([[0.5, 0.9], [0.2, 0.9]])
SCALED = np.array([0.5, 1.5])


def test_total_variation_is_half_the_l1_distance_of_the_shares() -> None:
    # shares (0.5, 0.5) against (1, 0): (0.5 + 0.5) / 2
    assert total_variation(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), 2) == pytest.approx(0.5)
    # (0.25, 0.75, 0) against (0, 0.5, 0.5): (0.25 + 0.25 + 0.5) / 2
    assert total_variation(np.array([0, 1, 1, 1]), np.array([1, 2]), 3) == pytest.approx(0.5)
    assert total_variation(np.array([], dtype=np.int64), np.array([1]), 2) == 0.0


def _mix(jump: float, categories: list[int]) -> RecentMix:
    mix = RecentMix(window=10, categories=2, jump=jump, short=4)
    for category in categories:
        mix.join(category, MEANS[category])
    return mix


def test_a_jump_of_the_mix_hands_the_weight_to_the_short_window() -> None:
    jumped = [0] * 6 + [1] * 4  # older 6: all category 0; latest 4: all category 1 (distance 1)
    # the whole window holds 40% of category 1: 0.4; the latest 4 alone are all category 1: 0.7
    assert _mix(0.0, jumped).weight(MEANS, SCALED, per_prompt=False) == pytest.approx(0.4, abs=1e-9)
    short = _mix(0.5, jumped)
    assert short.weight(MEANS, SCALED, per_prompt=False) == pytest.approx(0.7, abs=1e-9) and short.jumped
    # prompt mode reads the same rows (each row its category's means, no correction): the same weights
    assert short.weight(np.zeros((2, 2)), SCALED, per_prompt=True) == pytest.approx(0.7, abs=1e-9)
    # older 6 at (4/6, 2/6), latest 4 at (0.5, 0.5): distance 1/6 <= 0.5, so the whole window (40%): 0.4
    steady = _mix(0.5, [0, 1, 0, 0, 1, 0, 1, 0, 1, 0])
    assert steady.weight(MEANS, SCALED, per_prompt=False) == pytest.approx(0.4, abs=1e-9) and not steady.jumped
    with pytest.raises(ValueError, match="jump"):
        RecentMix(window=10, categories=2, jump=1.5)


def test_the_router_reads_the_short_window_after_a_phase_jump() -> None:
    # 1000 requests at 20% category 1 ([0, 0, 0, 0, 1] repeated), then 50 at 80% ([1, 1, 1, 1, 0]). At the
    # refresh after request 1,050 the window of 200 holds 150 of the first phase and 50 of the second:
    # (30 + 40) / 200 = 35% of category 1, so 0.4 without the jump test. With it, the latest 50 (80%)
    # against the older 150 (20%) are at distance 0.6 > 0.5: the weight reads the latest 50 alone, 0.7.
    bases = []
    for jump in (0.0, 0.5):
        router = OnlineRouter(
            MEANS, [1.0, 3.0], target=2.0, explore_cap=0.0, mix_window=200, mix_jump=jump, mix_short=50
        )
        for category in [0, 0, 0, 0, 1] * 200 + [1, 1, 1, 1, 0] * 10:
            router.served(router.choose(category).expert)
        bases.append(router.controller.base)
    assert bases == pytest.approx([0.4, 0.7], abs=1e-6)  # the posterior floors move means by 1e-7


def test_the_expert_offset_moves_every_category_of_the_expert() -> None:
    post = ScorePosterior(np.array([[0.6, 0.5], [0.4, 0.5]]), prior_strength=10, max_count=100, expert_rate=0.1)
    # First score 0.2 of expert 0 in category 0: residual 0.2 - 0.6 = -0.4; offset 0.1 * -0.4 = -0.04; the
    # cell learns 0.2 less the offset it was predicted with (0): alpha 6.2, beta 4.8.
    assert post.update(0, 0, 0.2) == pytest.approx(-0.4, abs=1e-6)
    assert post.offset[0] == pytest.approx(-0.04, abs=1e-7) and post.offset[1] == 0.0
    assert post.mean()[0, 0] == pytest.approx(6.2 / 11, abs=1e-6)
    assert post.estimate()[:, 0] == pytest.approx([6.2 / 11 - 0.04, 0.4 - 0.04], abs=1e-6)  # category 1 moves too
    # Second: residual 0.2 - (6.2 / 11 - 0.04); the cell learns 0.2 + 0.04 = 0.24: alpha 6.44, beta 5.56.
    residual = 0.2 - (6.2 / 11 - 0.04)
    assert post.update(0, 0, 0.2) == pytest.approx(residual, abs=1e-6)
    assert post.offset[0] == pytest.approx(-0.04 + 0.1 * residual, abs=1e-6)
    assert post.mean()[0, 0] == pytest.approx(6.44 / 12, abs=1e-6)
    plain = ScorePosterior(np.array([[0.6, 0.5]]), prior_strength=10, max_count=100)
    assert plain.update(0, 0, 0.2) == pytest.approx(-0.4, abs=1e-6) and plain.offset[0] == 0.0


def test_feedback_on_one_category_moves_the_other_categorys_choice_only_with_the_offset() -> None:
    # Both categories start at 0.6 (expert a) against 0.5 (b), equal costs. One score of 0 for a in
    # category 0: residual -0.6; at rate 0.5 the offset is -0.3, so a's estimate in category 1 is 0.3 < 0.5.
    for rate, expected in ((0.0, 0), (0.5, 1)):
        router = OnlineRouter(
            np.array([[0.6, 0.5], [0.6, 0.5]]), [1.0, 1.0], target=1.0, explore_cap=0.0, prior_strength=10,
            expert_rate=rate,
        )  # fmt: skip
        router.feedback(0, 0, 0.0)
        assert router.choose(1).expert == expected


def test_the_offset_is_saved_and_resumed_and_a_state_without_it_resumes_at_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fresh() -> OnlineRouter:
        return OnlineRouter(np.array([[0.6, 0.5]]), [1.0, 1.0], target=1.0, prior_strength=10, expert_rate=0.5)

    before = fresh()
    before.feedback(0, 0, 0.0)  # offset -0.3
    state = before.export_state(["c"], ["a", "b"])
    assert state["expert_offset"] == pytest.approx([-0.3, 0.0], abs=1e-6)
    after = fresh()
    assert resume(after, state, ["c"], ["a", "b"])
    assert after.posterior.offset == pytest.approx([-0.3, 0.0], abs=1e-6)
    older = fresh()
    assert resume(older, {k: v for k, v in state.items() if k != "expert_offset"}, ["c"], ["a", "b"])
    assert older.posterior.offset.tolist() == [0.0, 0.0]
    assert older.posterior.mean() == pytest.approx(before.posterior.mean())  # the rest resumed
    for corrupt in ([0.1], ["x", 0.0], [2.0, 0.0]):  # another length, not numbers, out of range
        untouched = fresh()
        with caplog.at_level(logging.WARNING, logger="coserve.router"):
            assert not resume(untouched, {**state, "expert_offset": corrupt}, ["c"], ["a", "b"])
        assert "expert offset" in caplog.text
        assert untouched.posterior.offset.tolist() == [0.0, 0.0]
        assert untouched.posterior.mean() == pytest.approx(np.array([[0.6, 0.5]]), abs=1e-6)
        caplog.clear()


def test_an_alarm_re_solves_the_feed_forward_weight_at_once_where_enabled() -> None:
    # Expert a (cost 1, 0.8) and b (cost 3, 0.6), target 2: scaled 0.5 and 1.5; a is best and cheap, so the
    # feed-forward weight is 0. Three scores of 0.3 for a raise an alarm (tests/test_drift.py's numbers):
    # a's mean becomes m = 8.9 / 13 + the mean residual, below b's 0.6, so the map at weight 0 buys b (1.5
    # > 1): the weight that holds the target is where a ties b, m - 0.5 w = 0.6 - 1.5 w: w = 0.6 - m.
    residuals = [0.3 - 0.8, 0.3 - 8.3 / 11, 0.3 - 8.6 / 12]
    m = 8.9 / 13 + np.mean(residuals)
    for refresh, expected in ((False, 0.0), (True, 0.6 - m)):
        router = OnlineRouter(
            np.array([[0.8, 0.6]]), [1.0, 3.0], target=2.0, explore_cap=0.0, prior_strength=10, mix_window=100,
            change=ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0), refresh_on_alarm=refresh,
        )  # fmt: skip
        router.served(router.choose(0).expert)  # one request in the mix; the next refresh is 24 requests away
        for _ in range(3):
            router.feedback(0, 0, 0.3)
        assert router.alarms == 1
        assert router.controller.base == pytest.approx(expected, abs=1e-6)


def test_settings_carry_the_new_knobs_and_refuse_values_out_of_range() -> None:
    settings = OnlineSettings(expert_rate=0.01, mix_jump=0.3, mix_short=150, refresh_on_alarm=True)
    router = OnlineRouter.from_settings(MEANS, [1.0, 3.0], 2.0, settings)
    assert router.posterior.expert_rate == 0.01 and router.refresh_on_alarm
    assert (router.recent.jump, router.recent.short) == (0.3, 150)
    for bad in ({"mix_jump": 1.5}, {"expert_rate": 1.0}, {"mix_short": 0}):
        with pytest.raises(ValidationError):
            OnlineSettings(**bad)
