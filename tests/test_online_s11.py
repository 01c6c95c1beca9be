"""Session 11's settings of the online router, exact values derived by hand: a two-sided target (the cost
weight may fall below 0, down to ``-weight_floor``), exploration of an expert a downward alarm moved for a
bounded number of requests, and a smaller move of the means at an alarm."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import weight_for_mix
from coserve.router.online import BudgetController, ChangeSettings, OnlineRouter, resume

# Scaled costs 0.5 and 1.5 (cost 1 and 3 against a target of 2). The cheap expert is better in both
# categories, by 0.1 in category 0 and by 0.3 in category 1: at weight w < 0 the dear one wins where
# 0.5 - 1.5 w > 0.6 - 0.5 w, i.e. w < -0.1 (category 0), and w < -0.3 (category 1); ties go to the cheaper.
MEANS = np.array([[0.6, 0.5], [0.8, 0.5]])
SCALED = np.array([0.5, 1.5])


def test_the_two_sided_controller_lets_the_weight_fall_to_minus_the_floor() -> None:
    # target 2, step 0.1: a request of cost 0 moves the integral part by -0.1, one of cost 4 by +0.1
    ctl = BudgetController(target=2.0, step=0.1, weight_floor=0.15)
    ctl.observe(0.0)
    assert ctl.weight == pytest.approx(-0.1) and ctl.effective == pytest.approx(-0.1)
    ctl.observe(0.0)  # -0.2, held at the floor -0.15
    assert ctl.weight == pytest.approx(-0.15) and ctl.effective == pytest.approx(-0.15)
    ctl.observe(4.0)
    assert ctl.effective == pytest.approx(-0.05)
    ctl.set_base(0.5)  # floor -0.65; the effective weight 0.45
    assert ctl.floor == pytest.approx(-0.65) and ctl.effective == pytest.approx(0.45)
    one_sided = BudgetController(target=2.0, step=0.1)
    for cost in (0.0, 0.0, 4.0):
        one_sided.observe(cost)
    assert one_sided.effective == pytest.approx(0.1)  # floored at 0 twice, then +0.1
    # with a debt of 2 requests the integral part goes 0.2 further (-0.35) while the weight stays at -0.15
    debt = BudgetController(target=2.0, step=0.1, weight_floor=0.15, debt=2.0)
    for _ in range(4):
        debt.observe(0.0)
    assert debt.weight == pytest.approx(-0.35) and debt.effective == pytest.approx(-0.15)
    with pytest.raises(ValueError, match="weight_floor"):
        BudgetController(target=2.0, weight_floor=-0.01)


def test_weight_for_mix_solves_for_a_negative_weight_where_weight_0_underspends() -> None:
    # weight 0 sends both categories to the cheap expert: cost 0.5 < 1. Between -0.3 and -0.1 category 0
    # goes dear: half and half costs (1.5 + 0.5) / 2 = 1.0 <= 1, down to -0.3 (below: both dear, 1.5)
    assert weight_for_mix(MEANS, SCALED, np.array([1, 1])) == 0.0  # one-sided: 0
    assert weight_for_mix(MEANS, SCALED, np.array([1, 1]), least=-0.5) == pytest.approx(-0.3, abs=1e-9)
    assert weight_for_mix(MEANS, SCALED, np.array([1, 1]), least=-0.2) == -0.2  # the floor already spends <= 1
    # three of category 0 for one of 1: (3 * 1.5 + 0.5) / 4 = 1.25 > 1 below -0.1, so -0.1 (0.5)
    assert weight_for_mix(MEANS, SCALED, np.array([3, 1]), least=-0.5) == pytest.approx(-0.1, abs=1e-9)
    # where weight 0 overspends, the floor changes nothing (test_drift's case: 0.4)
    means = np.array([[0.5, 0.9], [0.2, 0.9]])
    assert weight_for_mix(means, SCALED, np.array([8, 2]), least=-0.5) == pytest.approx(0.4, abs=1e-9)


def test_the_router_buys_the_dearer_expert_below_weight_0_and_its_feed_forward_goes_negative() -> None:
    def router(floor: float) -> OnlineRouter:
        return OnlineRouter(MEANS, [1.0, 3.0], 2.0, explore_cap=0.0, prior_strength=10, step=1e-6,
                            mix_window=100, weight_floor=floor)  # fmt: skip

    two_sided, one_sided = router(0.5), router(0.0)
    for r in (two_sided, one_sided):
        for i in range(25):  # categories 1, 0, 1, ...: 13 of category 1, 12 of 0; the 25th sets the feed-forward
            r.served(r.choose(1 - i % 2).expert)
    # 12 of 0 going dear: (12 * 1.5 + 13 * 0.5) / 25 = 0.98 <= 1 down to -0.3
    assert two_sided.controller.base == pytest.approx(-0.3, abs=1e-6) and one_sided.controller.base == 0.0
    assert two_sided.choose(0).expert == 1 and one_sided.choose(0).expert == 0


CHANGE = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0)


def _alarmed(explore: int = 50, weight: float = 0.0, change: ChangeSettings = CHANGE) -> OnlineRouter:
    # a (0.8 with 10 pseudo-counts) scores 0.3 three times: residuals -0.5, 0.3 - 8.3 / 11, 0.3 - 8.6 / 12; the
    # down statistic 0.45, 0.8545, 1.2212 > 1: an alarm, shift -0.45707, after which a keeps 2 pseudo-counts
    router = OnlineRouter(np.array([[0.8, 0.75, 0.74]]), [1.0, 1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10,
                          change=change, alarm_explore=explore, weight=weight)  # fmt: skip
    for _ in range(3):
        router.feedback(0, 0, 0.3)
    assert router.alarms == 1
    return router


def test_an_alarm_moves_the_means_by_its_share_of_the_estimated_shift() -> None:
    # a's mean after the three scores is 8.9 / 13 = 0.684615; the estimated shift -0.457071
    for share, mean in ((1.0, 0.684615 - 0.457071), (0.5, 0.684615 - 0.5 * 0.457071), (0.0, 0.684615)):
        router = _alarmed(change=ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0, shift_share=share))
        assert router.posterior.mean()[0, 0] == pytest.approx(mean, abs=1e-5)
        assert router.posterior.count()[0, 0] == pytest.approx(2.0, abs=1e-5)
    with pytest.raises(ValueError, match="shift_share"):
        ChangeSettings(shift_share=1.5)


def test_an_expert_a_drop_alarm_moved_is_explored_at_weight_0_for_that_many_requests_and_no_other() -> None:
    router = _alarmed(explore=50)
    assert router.after_alarm.left.tolist() == [50, 0, 0]
    decisions = [router.choose(0) for _ in range(300)]
    assert router.after_alarm.left.tolist() == [0, 0, 0]
    explored = [i for i, d in enumerate(decisions) if d.explored]
    # a (mean 0.23, 2 counts) draws above b (0.75, 10 counts) now and then; c (0.74) is never explored
    assert explored and max(explored) < 50 and {decisions[i].expert for i in explored} == {0}
    assert {d.expert for i, d in enumerate(decisions) if i not in explored} == {1}
    # at weight 0.5 the budget binds (equal costs: the same greedy choice): no exploring; nor without the setting
    for router in (_alarmed(explore=50, weight=0.5), _alarmed(explore=0)):
        assert not any(router.choose(0).explored for _ in range(50))


def test_the_requests_left_to_explore_are_saved_and_resumed() -> None:
    categories, experts = ["chat"], ["a", "b", "c"]
    router = _alarmed(explore=50)
    for _ in range(10):
        router.choose(0)
    state = router.export_state(categories, experts)
    assert state["alarm_explore"] == [40, 0, 0]
    fresh = OnlineRouter(np.array([[0.8, 0.75, 0.74]]), [1.0, 1.0, 1.0], 1.0, prior_strength=10, change=CHANGE,
                         alarm_explore=50)  # fmt: skip
    assert resume(fresh, state, categories, experts) and fresh.after_alarm.left.tolist() == [40, 0, 0]
    for explore, left in ((30, [30, 0, 0]), (0, [0, 0, 0])):  # at most the resuming router's own setting
        other = OnlineRouter(np.array([[0.8, 0.75, 0.74]]), [1.0, 1.0, 1.0], 1.0, prior_strength=10, change=CHANGE,
                             alarm_explore=explore)  # fmt: skip
        assert resume(other, state, categories, experts) and other.after_alarm.left.tolist() == left
    older = {key: value for key, value in state.items() if key != "alarm_explore"}  # saved before session 11
    assert resume(fresh, older, categories, experts) and fresh.after_alarm.left.tolist() == [0, 0, 0]
    for bad in ([-1, 0, 0], [1.5, 0, 0], [1, 0], "many"):
        fresh.after_alarm.left[:] = [7, 0, 0]
        assert not resume(fresh, {**state, "alarm_explore": bad}, categories, experts)
        assert fresh.after_alarm.left.tolist() == [7, 0, 0]  # nothing changed


def test_a_refused_alarm_exploration_warns_and_keeps_the_offline_map(caplog: pytest.LogCaptureFixture) -> None:
    state = _alarmed().export_state(["chat"], ["a", "b", "c"])
    fresh = _alarmed()
    with caplog.at_level(logging.WARNING, "coserve.router"):
        assert not resume(fresh, {**state, "alarm_explore": [-3, 0, 0]}, ["chat"], ["a", "b", "c"])
    assert "alarm exploration" in caplog.text


def test_settings_carry_session_11s_knobs_to_the_router_and_the_replay() -> None:
    settings = OnlineSettings(weight_floor=0.01, alarm_explore=500, change_shift_share=0.5)
    router = OnlineRouter.from_settings(MEANS, [1.0, 3.0], 2.0, settings)
    assert router.controller.weight_floor == 0.01 and router.after_alarm.requests == 500
    assert router.change is not None and router.change.shift_share == 0.5
    assert router.controller.floor == pytest.approx(-0.01)
    online = AdaptOptions(weight_floor=0.02, alarm_explore=100, change_shift_share=0.25).online()
    assert (online.weight_floor, online.alarm_explore, online.change_shift_share) == (0.02, 100, 0.25)
    defaults = OnlineSettings()
    # the two-sided target by --stage s11 (docs/data/adapt-tuning-s11.json); alarm_explore 6,000 behind session 20's
    # collapse gate (docs/data/adapt-pairs-s20-third.json); the whole shift
    assert (defaults.weight_floor, defaults.alarm_explore, defaults.change_shift_share) == (0.005, 6000, 1.0)
    for bad in ({"weight_floor": -0.01}, {"alarm_explore": -1}, {"change_shift_share": 1.2}):
        with pytest.raises(ValidationError):
            OnlineSettings(**bad)  # type: ignore[arg-type]


def test_bench_adapt_refuses_a_bad_session_11_knob_with_a_clear_error() -> None:
    # `coserve bench adapt --weight-floor -0.01` printed a pydantic traceback; now one line, the option named
    for bad, message in (
        ({"weight_floor": -0.01}, "weight_floor: Input should be greater than or equal to 0"),
        ({"alarm_explore": -1}, "alarm_explore: Input should be greater than or equal to 0"),
        ({"change_shift_share": 2.0}, "change_shift_share: Input should be less than or equal to 1"),
    ):
        with pytest.raises(ConfigError, match=f"^{message}$"):
            AdaptOptions(**bad)  # type: ignore[arg-type]
