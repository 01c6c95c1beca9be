"""A downward alarm confirmed before it sticks (``change_confirm``, session 15, ``online_confirm``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from adapt_flags import assert_bench_adapt_refuses
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.bench.adapt_baselines import alarm_report
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeDetector, ChangeSettings
from coserve.router.online import OnlineRouter
from coserve.router.online_confirm import ChangeConfirm, ConfirmSettings
from coserve.router.online_knobs import router_options
from coserve.router.online_model import ScorePosterior

CHANGE = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0, upward=False)  # a rise moves nothing
NAMES = (["k"], ["a", "b", "c"])


def _alarmed(on: bool = True, requests: int = 200, cost: tuple[float, ...] = (1.0, 1.0, 1.0), weight: float = 0.0):
    # a (0.9 with 10 pseudo-counts) scores 0.3 twice: a downward alarm (shift about -0.57) moves it from 0.8 to
    # about 0.23 with 2 counts, below b (0.7); no exploration (explore_cap 0)
    router = OnlineRouter(np.array([[0.9, 0.7, 0.6]]), cost, 1.0, explore_cap=0.0, prior_strength=10, change=CHANGE,
                          confirm=ConfirmSettings(on, requests), weight=weight)  # fmt: skip
    for _ in range(2):
        router.feedback(0, 0, 0.3)
    assert router.alarms == 1 and router.posterior.mean()[0, 0] < 0.3
    assert (0 in router.confirm.episodes) is on
    return router


def _serve(router: OnlineRouter, score: float, requests: int, allowed: list[bool] | None = None) -> list[int]:
    """Route ``requests``; each one routed to a is fed back ``score`` (the others their offline mean)."""
    chosen = []
    for _ in range(requests):
        decision = router.choose(0, allowed)
        chosen.append(decision.expert)
        router.feedback(0, decision.expert, score if decision.expert == 0 else [0.9, 0.7, 0.6][decision.expert])
    return chosen


def test_a_false_alarm_is_reverted_and_the_experts_traffic_returns() -> None:
    router = _alarmed()
    first = router.choose(0)
    assert (first.expert, first.explored) == (0, True)  # greedy under its pre-alarm means: routed to it
    router.feedback(0, 0, 0.9)
    assert router.detector is not None and router.detector.stat["up"][0] > 0  # against the moved mean: a rise
    for _ in range(2):  # residuals of about +0.1 against the pre-alarm mean: no change wins in 3 feedbacks
        assert router.confirm.episodes and router.choose(0).expert == 0
        router.feedback(0, 0, 0.9)
    assert router.confirm.outcomes["reverted"] == 1 and not router.confirm.episodes
    assert [e.get("confirm") for e in router.alarm_log if e["shift"] < 0] == ["reverted"]
    assert router.detector.stat["up"][0] == router.detector.stat["down"][0] == 0.0  # the detector restarts
    assert router.posterior.mean()[0, 0] > 0.8  # the pre-alarm column, its feedbacks on top
    chosen = _serve(router, 0.9, 50)
    assert chosen[-10:] == [0] * 10 and not router.choose(0).explored  # a is the map's choice again
    plain = _alarmed(on=False)
    assert 0 not in _serve(plain, 0.9, 50)  # without the setting the false move sticks: a never comes back


def test_a_true_drop_is_confirmed_and_kept() -> None:
    router = _alarmed()
    chosen = _serve(router, 0.3, 50)
    assert router.confirm.outcomes == {"confirmed": 1, "reverted": 0, "expired": 0}
    assert [e.get("confirm") for e in router.alarm_log if e["shift"] < 0] == ["confirmed"]
    assert 1 <= chosen.count(0) <= 5 and chosen[-40:] == [1] * 40  # a few test requests, then b
    assert router.posterior.mean()[0, 0] < 0.35


def test_an_episode_never_routes_more_than_its_bound_and_the_move_then_stays() -> None:
    router = _alarmed(requests=5)
    # a score of 0.514 sits halfway between the pre-alarm mean (0.8) and the shifted one: the test never decides
    chosen = _serve(router, 0.8 + router.confirm.episodes[0].shift / 2, 100)
    assert chosen.count(0) == 5 and router.confirm.routed == 5
    assert router.confirm.outcomes["expired"] == 1 and router.alarm_log[0]["confirm"] == "expired"
    assert router.posterior.mean()[0, 0] < 0.7  # the move stays


def test_the_episode_respects_constraints_and_the_cost_weight() -> None:
    router = _alarmed()
    assert 0 not in _serve(router, 0.9, 30, allowed=[False, True, True])
    assert router.choose(0, [True, False, True]).expert == 0  # c the moved map's choice; a's pre-alarm means win
    dear = _alarmed(cost=(3.0, 1.0, 1.0), weight=0.1)  # 0.8 - 0.3 < 0.7 - 0.1: a is not greedy even before the alarm
    assert 0 not in _serve(dear, 0.9, 30) and dear.confirm.routed == 0


def test_a_restart_mid_episode_drops_the_episode_and_keeps_the_move(caplog: pytest.LogCaptureFixture) -> None:
    router = _alarmed()
    state = json.loads(json.dumps(router.export_state(*NAMES)))
    assert state["change_confirm"] == [0]
    fresh = OnlineRouter(np.array([[0.9, 0.7, 0.6]]), [1.0] * 3, 1.0, explore_cap=0.0, prior_strength=10,
                         change=CHANGE, confirm=ConfirmSettings(True))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="coserve.router"):
        fresh.restore(state, *NAMES)
    assert "dropped on restart" in caplog.text and not fresh.confirm.episodes
    assert fresh.posterior.mean()[0, 0] < 0.3 and fresh.choose(0).expert == 1  # the move kept
    del state["change_confirm"]  # a state saved before the setting existed
    fresh.restore(state, *NAMES)


def test_settings_are_validated_off_by_default_and_carried() -> None:
    assert OnlineSettings().change_confirm is False and AdaptOptions().change_confirm is False
    options = router_options(OnlineSettings(change_confirm=True, change_confirm_requests=50))["confirm"]
    assert options == ConfirmSettings(True, 50, 0.45, 0.05)
    assert AdaptOptions(change_confirm=True, change_confirm_sd=0.2).online().change_confirm_sd == 0.2
    with pytest.raises(ValidationError, match="needs change_threshold > 0"):
        OnlineSettings(change_confirm=True, change_threshold=0)
    with pytest.raises(ValidationError, match="change_model flat"):
        OnlineSettings(change_confirm=True, change_model="proportional")
    for bad in ({"change_confirm_requests": 0}, {"change_confirm_sd": 0.0}, {"change_confirm_error": 0.5}):
        with pytest.raises(ValidationError):
            OnlineSettings(change_confirm=True, **bad)
    with pytest.raises(ConfigError, match=r"^change_confirm_error: "):
        AdaptOptions(change_confirm=True, change_confirm_error=0.0)
    with pytest.raises(ValueError, match="change_confirm_requests must be >= 1"):
        ConfirmSettings(True, 0)


def test_the_replays_alarm_report_says_which_alarms_were_reverted() -> None:
    log = [{"served": 10, "expert": 1, "shift": -0.3, "confirm": "reverted"}]
    log.append({"served": 60, "expert": 0, "shift": -0.3})
    report = alarm_report(log, ["a", "b"], shocked=0, shock_at=50)
    assert [a.get("confirm") for a in report["alarms"]] == ["reverted", None]
    assert [a["true"] for a in report["alarms"]] == [False, True]


def test_a_revert_restarts_the_detectors_statistics_for_the_expert() -> None:
    posterior, detector = ScorePosterior(np.array([[0.8, 0.6]]), 10.0, 100.0), ChangeDetector(2, 0.05, 4.0)
    confirm = ChangeConfirm(2, ConfirmSettings(True))
    confirm.opened(0, posterior, -0.3, {})
    posterior.rebase(0, -0.3, 2.0)
    for residual in (0.2, 0.2, 0.2):  # a rise against the moved mean, short of an alarm
        detector.observe(0, residual)
    detector.observe(1, -0.2)
    reverted = [confirm.feedback(0, 0, 0.8, 0.0, posterior, detector) for _ in range(20)]
    assert reverted.index(True) == 13 and not confirm.episodes  # 0.8, the pre-alarm mean: -0.22 a step to -2.94
    assert detector.stat["up"][0] == 0.0 and detector.stat["down"][1] > 0  # the other expert's untouched
    assert posterior.mean()[0, 0] == pytest.approx((8 + 0.8 * 14) / (10 + 14))  # its 14 feedbacks on top


def test_bench_adapt_takes_the_confirm_flags_and_refuses_bad_ones_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = (
        (["--change-confirm", "--change-threshold", "0"], "needs change_threshold > 0"),
        (
            ["--change-confirm", "--change-confirm-requests", "0"],
            "change_confirm_requests: Input should be greater",
        ),
        (["--change-confirm", "--change-confirm-sd", "-1"], "change_confirm_sd: Input should be greater"),
    )
    assert_bench_adapt_refuses(tmp_path, capsys, cases)
