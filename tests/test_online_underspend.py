"""The budget controller's settings for the underspend while the weight sits at 0 (session 10, branch
underspend), exact values derived by hand: the underspend carried below the floor and paid back, the step
that shrinks below a small weight, and a saved negative integral weight that resumes at the floor."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.router.online import BudgetController, OnlineRouter, resume

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


def test_settings_carry_the_controller_knobs_to_the_router_and_the_replay() -> None:
    settings = OnlineSettings(underspend_debt=25.0, fine_weight=0.02)
    router = OnlineRouter.from_settings(OFFLINE, [1.0, 3.0], 2.0, settings)
    assert (router.controller.debt, router.controller.fine_weight) == (25.0, 0.02)
    assert router.controller.floor == pytest.approx(-0.005 * 25)
    online = AdaptOptions(underspend_debt=25.0, fine_weight=0.02).online()
    assert (online.underspend_debt, online.fine_weight) == (25.0, 0.02)
    assert (OnlineSettings().underspend_debt, OnlineSettings().fine_weight) == (0.0, 0.0)  # off by default
    for bad in ({"underspend_debt": -1.0}, {"fine_weight": -0.01}):
        with pytest.raises(ValidationError):
            OnlineSettings(**bad)
