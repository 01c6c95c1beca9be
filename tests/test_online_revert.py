"""Half of a downward alarm's move taken back where it starved its expert (``alarm_revert``, session 18)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.router.drift import ChangeSettings
from coserve.router.online import OnlineRouter
from coserve.router.online_alarm import AlarmRevert
from coserve.router.online_knobs import router_options

CHANGE = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0)
NAMES = (["c"], ["a", "b", "c"])


def _alarmed(revert: int) -> OnlineRouter:
    # a (0.8 with 10 pseudo-counts, as cheap as b) scores 0.3 three times: an alarm moves it to 0.23, below b (0.4)
    router = OnlineRouter(np.array([[0.8, 0.4, 0.39]]), [1.0, 1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10,
                          change=CHANGE, alarm_revert=revert)  # fmt: skip
    for _ in range(3):
        router.feedback(0, 0, 0.3)
    assert router.alarms == 1 and router.snapshot.means[0, 0] < 0.5
    return router


def _route(router: OnlineRouter, requests: int) -> list[int]:
    chosen = []
    for _ in range(requests):
        expert = router.choose(0).expert
        router.served(expert)
        chosen.append(expert)
    return chosen


def test_a_starved_move_is_half_taken_back_once_and_the_expert_tried_again() -> None:
    router = _alarmed(revert=50)
    low = float(router.snapshot.means[0, 0])
    counts = router.posterior.count()[0, 0]
    before = _route(router, 50)
    assert set(before) == {1} and router.reverter.reverted == 1  # starved for 50 requests, then reverted
    moved = float(router.alarm_log[-1]["shift"])
    assert router.posterior.mean()[0, 0] == pytest.approx(low - 0.5 * moved, abs=1e-6)  # half the move back
    assert router.posterior.count()[0, 0] == pytest.approx(counts)  # its cells keep their cut counts
    assert router.snapshot.means[0, 0] > 0.4  # above b now: tried again
    assert set(_route(router, 5)) == {0}
    for _ in range(4):  # a's scores say the drop was real: the few re-tried requests settle it
        router.feedback(0, 0, 0.3)
    assert set(_route(router, 200)) == {1} and router.reverter.reverted == 1  # once per alarm


def test_nothing_is_taken_back_where_the_expert_kept_traffic_or_the_setting_is_off() -> None:
    router = _alarmed(revert=50)
    router.served(0)  # one request for the moved expert: its own feedback is correcting the move
    low = float(router.posterior.mean()[0, 0])
    _route(router, 80)
    assert router.reverter.reverted == 0 and router.posterior.mean()[0, 0] == pytest.approx(low)
    off = _alarmed(revert=0)
    low = float(off.posterior.mean()[0, 0])
    assert set(_route(off, 300)) == {1} and off.posterior.mean()[0, 0] == pytest.approx(low)


def test_a_restart_keeps_the_watch() -> None:
    router = _alarmed(revert=50)
    _route(router, 30)
    state = router.export_state(*NAMES)
    resumed = OnlineRouter(np.array([[0.8, 0.4, 0.39]]), [1.0, 1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10,
                           change=CHANGE, alarm_revert=50)  # fmt: skip
    resumed.restore(state, *NAMES)
    assert resumed.reverter.left.tolist() == [20, 0, 0]
    _route(resumed, 20)
    assert resumed.reverter.reverted == 1 and resumed.snapshot.means[0, 0] > 0.4
    older = {k: v for k, v in state.items() if k != "alarm_revert"}  # a state saved before session 18
    resumed.restore(older, *NAMES)
    assert resumed.reverter.left.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "saved",
    ["x", {"left": [1, 0, 0], "routed": [0, 0, 0], "move": [[0.1, 0.0, 0.0]]},  # a move must be downward
     {"left": [1, 0], "routed": [0, 0, 0], "move": [[0.0, 0.0, 0.0]]},
     {"left": [1, 0, 0], "routed": [0, 0, 0], "move": [[float("nan"), 0.0, 0.0]]}],
)  # fmt: skip
def test_a_malformed_saved_watch_is_refused(saved: object) -> None:
    with pytest.raises(ValueError, match="alarm revert"):
        AlarmRevert(1, 3, 50).restored(saved)


def test_the_whole_move_taken_back_where_the_share_is_1() -> None:
    router = OnlineRouter(np.array([[0.8, 0.4, 0.39]]), [1.0, 1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10,
                          change=CHANGE, alarm_revert=50, alarm_revert_share=1.0)  # fmt: skip
    for _ in range(3):
        router.feedback(0, 0, 0.3)
    low = float(router.posterior.mean()[0, 0])
    _route(router, 50)
    assert router.posterior.mean()[0, 0] == pytest.approx(low - float(router.alarm_log[-1]["shift"]), abs=1e-6)
    assert AlarmRevert(1, 3, 50, 1.0).restored(router.reverter.export_state()).share == 1.0  # a resume keeps it


def test_the_setting_is_off_by_default_and_carried_to_the_router_and_the_replay() -> None:
    assert OnlineSettings().alarm_revert == 0 and AdaptOptions().alarm_revert == 0
    options = router_options(OnlineSettings(alarm_revert=1000, alarm_revert_share=1.0))
    assert (options["alarm_revert"], options["alarm_revert_share"]) == (1000, 1.0)
    online = AdaptOptions(alarm_revert=3000, alarm_revert_share=0.25).online()
    assert (online.alarm_revert, online.alarm_revert_share) == (3000, 0.25)
    for share in (0.0, 1.5):
        with pytest.raises(ValidationError):
            OnlineSettings(alarm_revert_share=share)
        with pytest.raises(ValueError, match="share in"):
            AlarmRevert(1, 3, 50, share)
