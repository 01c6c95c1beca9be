"""The budget controller's settings for the underspend while the weight sits at 0 (session 10, branch
underspend), exact values derived by hand: the underspend carried below the floor and paid back, the step
that shrinks below a small weight, a saved negative integral weight that resumes at the floor, and a change
detector that rebases an expert on a drop only."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.router.online import BudgetController, ChangeSettings, OnlineRouter, resume

CATEGORIES = ["chat", "math"]
EXPERTS = ["small", "big"]
OFFLINE = np.array([[0.8, 0.85], [0.2, 0.9]])


def test_without_debt_the_underspend_at_weight_0_is_dropped() -> None:
    # target 2, step 0.1: a request of cost 0 moves the integral part by 0.1 * (0 / 2 - 1) = -0.1, one of cost
    # 4 by +0.1. With the feed-forward at 0.5 the floor is -0.5: ten free requests leave it there, so one
    # request at twice the target already lifts the weight to 0.1.
    ctl = BudgetController(target=2.0, step=0.1)
    ctl.set_base(0.5)
    for _ in range(10):
        ctl.observe(0.0)
    assert ctl.weight == pytest.approx(-0.5) and ctl.effective == 0.0
    ctl.observe(4.0)
    assert ctl.weight == pytest.approx(-0.4) and ctl.effective == pytest.approx(0.1)


def test_the_debt_carries_that_many_requests_of_underspend_and_pays_them_back() -> None:
    # debt 3: the floor is -0.5 - 0.1 * 3 = -0.8. Of the ten free requests (10 targets under), the first 5
    # reach -0.5 (weight 0) and 3 more are carried (-0.8); the last 2 are dropped. The 3 carried targets are
    # paid back by 3 requests at twice the target (each 1 target over) before the weight rises again.
    ctl = BudgetController(target=2.0, step=0.1, debt=3.0)
    ctl.set_base(0.5)
    for _ in range(10):
        ctl.observe(0.0)
    assert ctl.floor == pytest.approx(-0.8) and ctl.weight == pytest.approx(-0.8) and ctl.effective == 0.0
    for _ in range(3):
        ctl.observe(4.0)
    assert ctl.weight == pytest.approx(-0.5) and ctl.effective == 0.0
    ctl.observe(4.0)
    assert ctl.effective == pytest.approx(0.1)
    # a smaller feed-forward raises the floor to -0.2 - 0.3 = -0.5: the integral part (-0.4) stays
    ctl.set_base(0.2)
    assert ctl.weight == pytest.approx(-0.4) and ctl.effective == 0.0
    ctl.set_base(0.0)  # floor -0.3: the integral part is lifted to it, so at most 3 requests stay carried
    assert ctl.weight == pytest.approx(-0.3)


def test_the_fine_weight_shrinks_the_step_below_a_small_weight() -> None:
    # fine weight 0.4: a move keeps min(1, max(0.25, effective / 0.4)) of step 0.1 * (cost / 2 - 1)
    ctl = BudgetController(target=2.0, step=0.1, fine_weight=0.4)
    ctl.observe(4.0)  # at weight 0: a quarter of +0.1
    assert ctl.weight == pytest.approx(0.025)
    ctl.observe(4.0)  # effective 0.025: 0.025 / 0.4 = 0.0625 < 0.25, so a quarter again
    assert ctl.weight == pytest.approx(0.05)
    ctl.set_base(0.2)  # effective 0.25: 0.625 of the step
    ctl.observe(4.0)
    assert ctl.weight == pytest.approx(0.1125) and ctl.effective == pytest.approx(0.3125)
    ctl.set_base(1.0)  # effective 1.1125 > 0.4: the whole step
    ctl.observe(0.0)
    assert ctl.weight == pytest.approx(0.0125)
    with pytest.raises(ValueError, match="debt and fine_weight"):
        BudgetController(target=2.0, fine_weight=-0.1)


def _router(**knobs: float) -> OnlineRouter:
    return OnlineRouter(OFFLINE, [1.0, 3.0], target=2.0, explore_cap=0.0, prior_strength=10, step=0.005, **knobs)


def test_a_negative_integral_weight_is_saved_and_resumed_at_this_routers_floor() -> None:
    # cost 1 against target 2: each served request moves the integral part by 0.005 * (0.5 - 1) = -0.0025;
    # with 2 requests of debt the floor is -0.01, reached after 4 requests and kept after 6
    saved = _router(underspend_debt=2.0)
    for _ in range(6):
        saved.served(0)
    state = saved.export_state(CATEGORIES, EXPERTS)
    assert state["weight"] == pytest.approx(-0.01)
    same = _router(underspend_debt=2.0)
    assert resume(same, state, CATEGORIES, EXPERTS) and same.controller.weight == pytest.approx(-0.01)
    smaller = _router(underspend_debt=1.0)  # floor -0.005
    assert resume(smaller, state, CATEGORIES, EXPERTS) and smaller.controller.weight == pytest.approx(-0.005)
    without = _router()  # floor 0 before any feed-forward weight
    assert resume(without, state, CATEGORIES, EXPERTS) and without.controller.weight == 0.0
    assert without.snapshot.version == saved.snapshot.version == 6


def test_a_weight_that_is_not_a_number_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    state = {**_router().export_state(CATEGORIES, EXPERTS), "weight": float("nan")}
    router = _router(underspend_debt=2.0)
    with caplog.at_level(logging.WARNING, "coserve.router"):
        assert not resume(router, state, CATEGORIES, EXPERTS)
    assert "weight must be finite" in caplog.text and router.controller.weight == 0.0


def _detecting(upward: bool) -> OnlineRouter:
    change = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0, upward=upward)
    return OnlineRouter(np.array([[0.8, 0.6]]), [1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10, change=change)


def test_without_upward_alarms_a_rise_is_learnt_by_the_cell_and_a_drop_still_rebases() -> None:
    # Scores of 1 for expert b (prior 6 / 4): means before each update 0.6, 7/11, 8/12, 9/13; residuals 0.4,
    # 4/11, 1/3, 4/13; the up statistic (drift 0.05) 0.35, 0.6636, 0.9470, 1.2047 > 1 at the fourth: an alarm.
    residuals = [0.4, 4 / 11, 1 / 3, 4 / 13]
    # with upward alarms b moves by their mean (0.35), clipped at 1; without, it keeps the cell's 10 / 14
    cases = ((True, min(1.0, 10 / 14 + np.mean(residuals)), 2.0, 1), (False, 10 / 14, 14.0, 0))
    for upward, mean, count, alarms in cases:
        router = _detecting(upward)
        for _ in range(4):
            router.feedback(0, 1, 1.0)
        assert router.alarms == alarms
        assert router.posterior.mean()[0, 1] == pytest.approx(mean, abs=1e-5)
        assert router.posterior.count()[0, 1] == pytest.approx(count, abs=1e-5)
        assert router.detector is not None and router.detector.stat["up"][1] == 0.0  # restarted either way
    # the drop of tests/test_drift.py (scores of 0.3 for a, prior 8 / 2) rebases a without upward alarms too
    router = _detecting(False)
    for _ in range(3):
        router.feedback(0, 0, 0.3)
    assert router.alarms == 1 and router.posterior.count()[0, 0] == pytest.approx(2.0, abs=1e-5)


def test_requests_decided_at_weight_0_explore_beyond_the_cap_and_others_never() -> None:
    # two experts of equal cost and nearly equal means with 2 pseudo-counts each: Thompson draws pick
    # either, the mean picks b (0.51 > 0.5); with explore_cap 0 only explore_at_zero lets a draw decide
    offline = np.array([[0.5, 0.51]])
    chosen = {}
    for at_zero, weight in ((False, 0.0), (True, 0.0), (True, 0.5)):
        router = OnlineRouter(offline, [1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=2, max_count=2,
                              weight=weight, explore_at_zero=at_zero)  # fmt: skip
        chosen[at_zero, weight] = [router.choose(0) for _ in range(200)]
    assert {d.expert for d in chosen[False, 0.0]} == {1} and not any(d.explored for d in chosen[False, 0.0])
    assert {d.expert for d in chosen[True, 0.0]} == {0, 1}  # exploring: a goes wherever its draw is higher
    assert all(d.explored == (d.expert == 0) for d in chosen[True, 0.0])
    # at weight 0.5 (the same cost for both, so the same choice as at 0) the budget binds: no exploring
    assert {d.expert for d in chosen[True, 0.5]} == {1} and not any(d.explored for d in chosen[True, 0.5])


def test_settings_carry_the_controller_knobs_to_the_router_and_the_replay() -> None:
    settings = OnlineSettings(underspend_debt=25.0, fine_weight=0.02, change_upward=True, explore_at_zero=True)
    router = OnlineRouter.from_settings(OFFLINE, [1.0, 3.0], 2.0, settings)
    assert (router.controller.debt, router.controller.fine_weight) == (25.0, 0.02)
    assert router.change is not None and router.change.upward and router.explore_at_zero
    default = OnlineRouter.from_settings(OFFLINE, [1.0, 3.0], 2.0, OnlineSettings())
    assert default.change is not None and not default.change.upward
    assert router.controller.floor == pytest.approx(-0.005 - 0.005 * 25)  # the default weight_floor less the debt
    online = AdaptOptions(underspend_debt=25.0, fine_weight=0.02, change_upward=False).online()
    assert (online.underspend_debt, online.fine_weight, online.change_upward) == (25.0, 0.02, False)
    defaults = OnlineSettings()
    assert (defaults.underspend_debt, defaults.fine_weight, defaults.change_upward) == (0.0, 0.0, False)
    for bad in ({"underspend_debt": -1.0}, {"fine_weight": -0.01}):
        with pytest.raises(ValidationError):
            OnlineSettings(**bad)
