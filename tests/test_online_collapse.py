"""A downward alarm's expert re-tested only while the budget has collapsed (``alarm_explore_underspend``,
session 20): the window's realised cost more than that share under the target, the cost weight <= 0."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeSettings
from coserve.router.online import OnlineRouter
from coserve.router.online_alarm import AlarmExploration
from coserve.router.online_knobs import router_options

CHANGE = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0)


def _dear_dropped(underspend: float) -> OnlineRouter:
    # a cheap expert (cost 1) and a dear one (cost 3), target 2; the dear one (0.8, 10 pseudo-counts) scores 0.1
    # three times: a downward alarm moves it to about 0.1 with 2 counts, below the cheap one's 0.6
    router = OnlineRouter(np.array([[0.6, 0.8]]), [1.0, 3.0], 2.0, explore_cap=0.0, prior_strength=10,
                          change=CHANGE, alarm_explore=5000, alarm_explore_underspend=underspend)  # fmt: skip
    for _ in range(3):
        router.feedback(0, 1, 0.1)
    assert router.alarms == 1 and router.after_alarm.left.tolist() == [0, 5000]
    return router


def _explored(router: OnlineRouter, n: int = 400) -> list[int]:
    return [d.expert for d in (router.choose(0) for _ in range(n)) if d.explored]


def test_the_dropped_expert_is_re_tested_only_while_the_window_spends_far_under_the_target() -> None:
    collapsed, held = _dear_dropped(0.1), _dear_dropped(0.1)
    for _ in range(500):
        collapsed.served(0)  # only the cheap expert: the window spends 1 against a target of 2
    for _ in range(250):  # dear then cheap: the window spends the target, and the weight ends at 0 each pair
        held.served(1)
        held.served(0)
    assert collapsed.controller.realised() == 1.0 and held.controller.realised() == 2.0
    assert collapsed.snapshot.weight <= 0 and held.snapshot.weight <= 0
    # the just-cut posterior (0.1, 2 counts) draws above the cheap one's now and then: re-tested in the collapse
    explored = _explored(collapsed)
    assert explored and set(explored) == {1}
    assert _explored(held) == []  # the same weight, the budget spent: no re-test
    plain = _dear_dropped(0.0)  # alarm_explore alone re-tests at weight <= 0 whatever the window spends
    for _ in range(250):
        plain.served(1)
        plain.served(0)
    assert plain.snapshot.weight <= 0 and _explored(plain)
    assert _explored(_dear_dropped(0.1)) == []  # no request served yet: no window, no collapse


def test_acts_reads_the_window_only_where_the_rest_allows_it() -> None:
    def refuse() -> float:
        raise AssertionError("the window was read where nothing could explore")

    gate = AlarmExploration(2, 10, underspend=0.1)
    assert not gate.acts(True, refuse)  # nothing open
    gate.alarmed(1)
    assert not gate.acts(False, refuse)  # the budget binds
    assert gate.acts(True, lambda: 0.89) and not gate.acts(True, lambda: 0.9) and not gate.acts(True, lambda: None)
    assert not gate.acts(True)  # no window given: not known to have collapsed
    assert AlarmExploration(2, 10).acts(False) is False and gate.restored([3, 0]).underspend == 0.1
    with pytest.raises(ValueError, match="underspend"):
        AlarmExploration(2, 10, underspend=1.0)


def test_the_guard_is_on_by_default_checked_and_carried_to_the_router_and_the_replay() -> None:
    # the default since session 20 (docs/decisions.md): alarm_explore 6,000 gated at 5% under the target
    defaults = OnlineSettings()
    assert (defaults.alarm_explore, defaults.alarm_explore_underspend) == (6000, 0.05)
    assert (AdaptOptions().alarm_explore, AdaptOptions().alarm_explore_underspend) == (6000, 0.05)
    assert router_options(defaults)["alarm_explore_underspend"] == 0.05
    # the default gate is inert where it cannot act: alarm_explore 0 turns the re-test off, and any weight widens it
    assert OnlineSettings(alarm_explore=0).alarm_explore == 0
    assert router_options(OnlineSettings(alarm_explore_any_weight=True))["alarm_explore_underspend"] == 0.0
    settings = OnlineSettings(alarm_explore=3000, alarm_explore_underspend=0.1)
    assert router_options(settings)["alarm_explore_underspend"] == 0.1
    router = OnlineRouter.from_settings(np.array([[0.6, 0.8]]), [1.0, 3.0], 2.0, settings)
    assert router.after_alarm.underspend == 0.1 and router.after_alarm.requests == 3000
    assert AdaptOptions(alarm_explore=3000, alarm_explore_underspend=0.2).online().alarm_explore_underspend == 0.2
    for bad in ({"alarm_explore": 0}, {"alarm_explore": 3000, "alarm_explore_any_weight": True}):  # both set
        with pytest.raises(ValidationError, match="alarm_explore_underspend narrows alarm_explore"):
            OnlineSettings(alarm_explore_underspend=0.1, **bad)
    with pytest.raises(ConfigError, match=r"^alarm_explore_underspend: Input should be less than 1$"):
        AdaptOptions(alarm_explore=3000, alarm_explore_underspend=1.0)
