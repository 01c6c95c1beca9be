"""The proportional change model (a risk-adjusted CUSUM, session 12), exact values derived by hand: each
feedback's increment weighed by the score it was expected to have, the shift fitted as a share of the
expected score, each cell moved by that share of its mean, the state resumed under the same model only,
and the setting validated."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.bench.adapt_baselines import alarm_report
from coserve.cli import main
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeDetector
from coserve.router.drift_weighted import ProportionalDetector, cell_shift, restore_detector
from coserve.router.online import ChangeSettings, OnlineRouter, resume
from coserve.store.log import DecisionLog
from coserve.store.online_state import read_state, write_state


def test_a_drop_counts_by_the_expected_score_and_a_prompt_expected_to_fail_adds_nothing() -> None:
    detector = ProportionalDetector(1, drift=0.1, threshold=1.0)
    # e = 0.8, s = 0.2 (r = -0.6): down 0.8 * 0.6 - 0.1 * 0.64 = 0.416; up 0.2 * -0.6 - ... < 0 (stays 0)
    assert detector.observe(0, -0.6, 0.8) is None
    assert detector.stat["down"][0] == pytest.approx(0.416) and detector.stat["up"][0] == 0.0
    assert detector.total["down"][0] == pytest.approx(-0.48) and detector.count["down"][0] == pytest.approx(0.64)
    # e = 0 (expected to fail), s = 0: weight 0 on the down side, nothing moves there
    assert detector.observe(0, 0.0, 0.0) is None
    assert detector.stat["down"][0] == pytest.approx(0.416) and detector.count["down"][0] == pytest.approx(0.64)
    # the flat detector, the same three numbers: down 0.6 - 0.1 = 0.5, then 0.5 + 0 - 0.1 = 0.4
    flat = ChangeDetector(1, drift=0.1, threshold=1.0)
    flat.observe(0, -0.6, 0.8)
    flat.observe(0, 0.0, 0.0)
    assert flat.stat["down"][0] == pytest.approx(0.4) and flat.count["down"][0] == 2.0


def test_an_alarm_returns_the_fitted_share_of_the_drop() -> None:
    detector = ProportionalDetector(2, drift=0.05, threshold=0.5)
    # e = 1, s = 0.7 (r = -0.3): +0.3 - 0.05 = 0.25; e = 0.5, s = 0.3 (r = -0.2): +0.1 - 0.0125 = 0.0875
    assert detector.observe(1, -0.3, 1.0) is None
    assert detector.observe(1, -0.2, 0.5) is None
    assert detector.stat["down"][1] == pytest.approx(0.3375)
    # e = 1, s = 0.6 (r = -0.4): +0.35 -> 0.6875 > 0.5: an alarm. rho = (0.3 + 0.1 + 0.4) / (1 + 0.25 + 1) = 0.8 / 2.25
    shift = detector.observe(1, -0.4, 1.0)
    assert shift == pytest.approx(-0.8 / 2.25)
    assert detector.stat["down"][1] == 0.0 and detector.count["down"][1] == 0.0  # both sides restart
    assert detector.stat["down"][0] == 0.0  # the other expert untouched


def test_a_rise_counts_by_the_room_left_above_the_expected_score() -> None:
    detector = ProportionalDetector(1, drift=0.1, threshold=0.5)
    # e = 0.2, s = 1 (r = 0.8): up 0.8 * 0.8 - 0.1 * 0.64 = 0.576 > 0.5; rho = 0.64 / 0.64 = 1
    assert detector.observe(0, 0.8, 0.2) == pytest.approx(1.0)
    # e = 0 and s = 0.5 twice: 0.5 - 0.1 = 0.4, then 0.8 > 0.5; rho = (0.5 + 0.5) / 2 = 0.5
    assert detector.observe(0, 0.5, 0.0) is None
    assert detector.observe(0, 0.5, 0.0) == pytest.approx(0.5)


def test_the_variance_floor_divides_each_increment_by_the_scores_variance() -> None:
    detector = ProportionalDetector(1, drift=0.1, threshold=10.0, variance_floor=0.05)
    # e = 0.5: variance 0.25, scale 4 * 0.25 = 1 -> 0.5 * 0.4 - 0.1 * 0.25 = 0.175
    detector.observe(0, -0.4, 0.5)
    assert detector.stat["down"][0] == pytest.approx(0.175)
    # e = 1: variance 0 floored at 0.05, scale 0.2 -> (1 * 0.3 - 0.1) / 0.2 = 1.0
    detector.observe(0, -0.3, 1.0)
    assert detector.stat["down"][0] == pytest.approx(1.175)
    with pytest.raises(ValueError, match="variance_floor"):
        ProportionalDetector(1, variance_floor=0.3)


def test_each_cell_moves_by_its_share_of_the_mean() -> None:
    means = np.array([0.8, 0.2, 0.0])
    assert cell_shift("flat", -0.1, means) == -0.1
    np.testing.assert_allclose(cell_shift("proportional", -0.25, means), [-0.2, -0.05, 0.0])
    np.testing.assert_allclose(cell_shift("proportional", 0.5, means), [0.1, 0.4, 0.5])


def _router(model: str, threshold: float = 0.5) -> OnlineRouter:
    # one category, two experts: the dear expert 1 is the better (0.8 vs 0.4); prior strength 10
    change = ChangeSettings(drift=0.05, threshold=threshold, reset_count=2.0, model=model)
    return OnlineRouter(np.array([[0.4, 0.8]]), [1.0, 3.0], 2.0, prior_strength=10.0, max_count=100.0, change=change)


def test_an_alarm_moves_the_experts_cells_by_the_share_of_their_means() -> None:
    router = _router("proportional")
    # expert 1 at 0.8 gets 0: r = -0.8, down 0.8 * 0.8 - 0.05 * 0.64 = 0.608 > 0.5; rho = 0.64 / 0.64 = 1.
    # The cell first learns the 0 (10 counts at 0.8 + a 0: 8 / 11), then moves by -1 x its mean to 0.
    router.feedback(0, 1, 0.0)
    assert router.alarms == 1 and list(router.alarm_log) == [{"served": 0, "expert": 1, "shift": -1.0}]
    assert router.posterior.mean()[0, 1] == pytest.approx(1e-6 / (2.0 + 2e-6))  # 0, as the rebase writes it
    assert router.posterior.count()[0, 1] == pytest.approx(2.0 + 2e-6)  # cut to reset_count
    # the flat model at the same numbers: -0.8 - 0.05 = 0.75 > 0.5, shift -0.8: the mean 8 / 11 - 0.8 < 0 -> 0
    flat = _router("flat")
    flat.feedback(0, 1, 0.0)
    assert flat.alarm_log[0]["shift"] == pytest.approx(-0.8)


def test_in_prompt_mode_the_expected_score_is_the_prompts_own() -> None:
    change = ChangeSettings(drift=0.05, threshold=0.5, model="proportional")
    router = OnlineRouter(
        np.array([[0.4, 0.6]]), [1.0, 3.0], 2.0, prior_strength=10.0, change=change, granularity="prompt"
    )
    # the prompt predicted at 0.1 for expert 1 (cell 0.6): expected 0.6 + (0.1 - 0.6) = 0.1; a 0 gives
    # r = -0.1, down 0.1 * 0.1 - 0.05 * 0.01 = 0.0095: no alarm. The cell learns clip(0 - (0.1 - 0.6)) = 0.5
    router.feedback(0, 1, 0.0, predicted=0.1)
    assert router.detector is not None and router.detector.stat["down"][1] == pytest.approx(0.0095)
    # the cell is now 6.5 / 11; predicted at 1.0: expected 6.5 / 11 + 0.4 = e; a 0 adds e^2 - 0.05 e^2 > 0.5:
    # an alarm, rho = (0.1 * 0.1 + e * e) / (0.01 + e^2) = 1
    router.feedback(0, 1, 0.0, predicted=1.0)
    assert router.alarms == 1 and router.alarm_log[0]["shift"] == pytest.approx(-1.0)


def test_the_state_resumes_under_the_same_model_and_starts_afresh_under_the_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = _router("proportional", threshold=5.0)
    router.feedback(0, 1, 0.2)  # e = 0.8, r = -0.6: down 0.48 - 0.032 = 0.448
    state = router.export_state(["c"], ["a", "b"])
    assert state["change"]["model"] == "proportional"
    again = _router("proportional", threshold=5.0)
    assert resume(again, state, ["c"], ["a", "b"])
    assert again.detector is not None and again.detector.stat["down"][1] == pytest.approx(0.448)
    flat = _router("flat", threshold=5.0)
    with caplog.at_level(logging.WARNING, logger="coserve.router"):
        assert resume(flat, state, ["c"], ["a", "b"])  # the posteriors resume; the detector starts afresh
    assert "saved under the proportional change model" in caplog.text
    assert flat.detector is not None and type(flat.detector) is ChangeDetector
    assert flat.detector.stat["down"][1] == 0.0
    assert flat.posterior.mean()[0, 1] == pytest.approx(again.posterior.mean()[0, 1])
    # a flat state (no "model": saved before session 12) into a proportional router: fresh, with a warning
    caplog.clear()
    old = {key: value for key, value in _router("flat").export_state(["c"], ["a", "b"])["change"].items()}
    detector, _ = restore_detector(old, ChangeSettings(model="proportional"), 1, 2)
    assert isinstance(detector, ProportionalDetector) and "saved under the flat" in caplog.text


def test_the_proportional_state_resumes_from_the_decision_logs_store(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    before = _router("proportional", threshold=5.0)
    before.feedback(0, 1, 0.2)  # down 0.448, as above; sum of e r = 0.8 * -0.6, sum of e^2 = 0.64
    log = DecisionLog(path).start()
    log.call(lambda conn: write_state(conn, before.export_state(["c"], ["a", "b"]))).result(10)
    log.close()
    after = _router("proportional", threshold=5.0)
    assert resume(after, read_state(path), ["c"], ["a", "b"])
    assert isinstance(after.detector, ProportionalDetector)
    assert after.detector.stat["down"][1] == pytest.approx(0.448)
    assert after.detector.total["down"][1] == pytest.approx(-0.48) and after.detector.count["down"][1] == pytest.approx(
        0.64
    )


def test_a_bad_change_model_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="change_model"):
        OnlineSettings(change_model="weighted")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="change_baseline posterior"):
        OnlineSettings(change_model="proportional", change_baseline="feedback")
    with pytest.raises(ValueError, match="model must be one of"):
        ChangeSettings(model="weighted")
    with pytest.raises(ConfigError, match="change_variance_floor"):
        AdaptOptions(change_model="proportional", change_variance_floor=0.5)
    assert AdaptOptions(change_model="proportional").online().change_model == "proportional"


def test_bench_adapt_refuses_a_bad_change_model_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    argv += ["--budget-params", "3", "--json", str(tmp_path / "x.json")]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--change-model", "weighted"])
    assert exited.value.code == 2 and "invalid choice: 'weighted'" in capsys.readouterr().err
    assert main([*argv, "--change-model", "proportional", "--change-baseline", "feedback"]) == 2
    assert "change_baseline posterior" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_the_replay_lists_every_alarm_and_which_is_true() -> None:
    log = [
        {"served": 100, "expert": 1, "shift": -0.2},  # before the shock: false
        {"served": 600, "expert": 0, "shift": 0.1},  # after, the shocked expert, but a rise: false
        {"served": 701, "expert": 0, "shift": -0.3},  # the true one, request 700: 200 after the shock at 500
        {"served": 900, "expert": 0, "shift": -0.1},  # a second true one
    ]
    report = alarm_report(log, ["x", "y"], shocked=0, shock_at=500)
    assert [a["true"] for a in report["alarms"]] == [False, False, True, True]
    assert report["alarms"][0] == {"request": 99, "expert": "y", "side": "down", "shift": -0.2, "true": False}
    assert report["false_alarms"] == 2 and report["false_drops"] == 1 and report["true_alarm_delay"] == 200
    assert alarm_report([], ["x"], 0, 10)["true_alarm_delay"] is None
