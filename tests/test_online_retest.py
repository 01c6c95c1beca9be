"""A downward alarm's move re-tested at any cost weight (``alarm_explore_any_weight``, session 14)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.router.drift import ChangeSettings
from coserve.router.online import OnlineRouter
from coserve.router.online_alarm import AlarmExploration
from coserve.router.online_knobs import router_options

CHANGE = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0)


def _alarmed(any_weight: bool, weight: float = 0.5, explore: int = 50) -> OnlineRouter:
    # a (0.8 with 10 pseudo-counts) scores 0.3 three times: a downward alarm moves it to about 0.23 with 2 counts
    router = OnlineRouter(np.array([[0.8, 0.75, 0.74]]), [1.0, 1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10,
                          change=CHANGE, alarm_explore=explore, alarm_explore_any_weight=any_weight,
                          weight=weight)  # fmt: skip
    for _ in range(3):
        router.feedback(0, 0, 0.3)
    assert router.alarms == 1 and router.after_alarm.left.tolist() == [explore, 0, 0]
    return router


def test_with_the_budget_binding_the_moved_expert_is_re_tested_only_with_the_setting() -> None:
    router = _alarmed(any_weight=True)
    decisions = [router.choose(0) for _ in range(300)]
    explored = [i for i, d in enumerate(decisions) if d.explored]
    # a's wide, just-cut posterior draws above b now and then: only a is explored, only within its 50 requests
    assert explored and max(explored) < 50 and {decisions[i].expert for i in explored} == {0}
    assert {d.expert for i, d in enumerate(decisions) if i not in explored} == {1}
    for other in (_alarmed(any_weight=False), _alarmed(any_weight=True, explore=0)):  # weight 0.5: none without it
        assert not any(other.choose(0).explored for _ in range(100))


def test_acts_reads_the_weight_only_without_the_setting() -> None:
    plain, wide = AlarmExploration(2, 10), AlarmExploration(2, 10, any_weight=True)
    assert not plain.acts(True) and not wide.acts(False)  # nothing open yet
    plain.alarmed(1)
    wide.alarmed(1)
    assert plain.acts(True) and not plain.acts(False) and wide.acts(True) and wide.acts(False)
    assert wide.restored([3, 0]).any_weight and not plain.restored([3, 0]).any_weight  # a resume keeps it


def test_the_setting_is_off_by_default_and_carried_to_the_router_and_the_replay() -> None:
    assert OnlineSettings().alarm_explore_any_weight is False and AdaptOptions().alarm_explore_any_weight is False
    settings = OnlineSettings(alarm_explore=500, alarm_explore_any_weight=True)
    assert router_options(settings)["alarm_explore_any_weight"] is True
    online = AdaptOptions(alarm_explore=500, alarm_explore_any_weight=True).online()
    assert (online.alarm_explore, online.alarm_explore_any_weight) == (500, True)
    with pytest.raises(ValidationError, match="it needs alarm_explore > 0"):
        OnlineSettings(alarm_explore=0, alarm_explore_any_weight=True)
