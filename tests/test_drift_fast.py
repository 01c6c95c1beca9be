"""The change detector's two faster paths (coserve.router.drift_fast; router.online.change_anchor and
change_fast_threshold): exact values on tiny tables, worked out by hand in each test's comments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.cli import main
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeSettings, restore_change
from coserve.router.drift_fast import ClimbAnchor, FastLane
from coserve.router.online import OnlineRouter


def test_the_fast_lane_climbs_on_drops_restarts_at_zero_and_alarms_with_its_mean_residual() -> None:
    lane = FastLane(1, drift=0.1, threshold=0.5)
    assert lane.observe(0, -0.3) is None  # 0.3 - 0.1 = 0.2
    assert lane.observe(0, -0.2) is None  # 0.2 + 0.2 - 0.1 = 0.3
    assert (lane.stat[0], lane.total[0], lane.count[0]) == pytest.approx((0.3, -0.5, 2.0))
    assert lane.observe(0, 0.5) is None  # 0.3 - 0.5 - 0.1 < 0: back to 0, sums forgotten
    assert (lane.stat[0], lane.total[0], lane.count[0]) == (0.0, 0.0, 0.0)
    assert lane.observe(0, -0.4) is None  # 0.3
    assert lane.observe(0, -0.5) == pytest.approx(-0.45)  # 0.3 + 0.5 - 0.1 = 0.7 > 0.5: mean of -0.4, -0.5
    assert (lane.stat[0], lane.total[0], lane.count[0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        FastLane(1, drift=0.1, threshold=0.0)


def _detector(fast_threshold: float) -> object:
    change = ChangeSettings(drift=0.05, threshold=100.0, fast_drift=0.1, fast_threshold=fast_threshold)
    detector, _ = restore_change(None, change, 1, 2)
    return detector


def test_a_fast_lane_alarm_is_the_detectors_alarm_and_restarts_both_cusums() -> None:
    fast, plain = _detector(0.5), _detector(0.0)
    assert plain.fast is None and fast.fast is not None  # type: ignore[attr-defined]
    for detector in (fast, plain):
        assert detector.observe(1, -0.4) is None  # type: ignore[attr-defined]  # main down 0.35, lane 0.3
    assert fast.observe(1, -0.5) == pytest.approx(-0.45)  # type: ignore[attr-defined]  # lane 0.7 > 0.5
    assert plain.observe(1, -0.5) is None  # type: ignore[attr-defined]  # main down 0.8 < 100: no lane, no alarm
    assert fast.stat["down"][1] == 0.0 and fast.fast.stat[1] == 0.0  # type: ignore[attr-defined]
    assert plain.stat["down"][1] == pytest.approx(0.8)  # type: ignore[attr-defined]


def test_the_fast_lane_survives_a_restart_and_an_older_state_starts_it_at_zero() -> None:
    detector = _detector(0.5)
    detector.observe(1, -0.4)  # type: ignore[attr-defined]
    saved = detector.export_state()  # type: ignore[attr-defined]
    assert saved["fast_stat"] == pytest.approx([0.0, 0.3]) and saved["fast_total"] == pytest.approx([0.0, -0.4])
    resumed = _detector(0.5)
    resumed.restore(saved)  # type: ignore[attr-defined]
    assert resumed.fast.stat.tolist() == pytest.approx([0.0, 0.3])  # type: ignore[attr-defined]
    assert resumed.observe(1, -0.5) == pytest.approx(-0.45)  # type: ignore[attr-defined]  # as if never stopped
    older = {key: value for key, value in saved.items() if not key.startswith("fast_")}
    fresh = _detector(0.5)
    fresh.restore(older)  # type: ignore[attr-defined]
    assert fresh.fast.stat.tolist() == [0.0, 0.0]  # type: ignore[attr-defined]
    assert fresh.stat["down"][1] == pytest.approx(0.35)  # type: ignore[attr-defined]  # the main CUSUM resumes
    bad = {**saved, "fast_stat": [-1.0, 0.0]}
    untouched = _detector(0.5)
    with pytest.raises(ValueError, match="fast lane"):
        untouched.restore(bad)  # type: ignore[attr-defined]
    assert untouched.stat["down"].tolist() == [0.0, 0.0]  # type: ignore[attr-defined]  # nothing changed


def test_the_anchor_follows_the_estimate_until_a_climb_then_holds_it() -> None:
    anchor = ClimbAnchor(2, 1)
    assert anchor.correction(0, 0, np.array([0.8, 0.6]), climbing=True) == 0.0  # nothing anchored yet: anchors now
    assert anchor.correction(1, 0, np.array([0.7, 0.5]), climbing=True) == pytest.approx(0.5 - 0.6)
    assert anchor.correction(0, 0, np.array([0.7, 0.5]), climbing=False) == 0.0  # at 0: the anchor follows
    assert anchor.correction(0, 0, np.array([0.65, 0.5]), climbing=True) == pytest.approx(0.65 - 0.7)


def _router(anchor: bool) -> OnlineRouter:
    change = ChangeSettings(drift=0.05, threshold=100.0, anchor=anchor)
    return OnlineRouter(np.array([[0.8, 0.5]]), [1.0, 1.0], 1.0, prior_strength=10.0, max_count=100.0, change=change)


def test_with_the_anchor_the_detector_reads_residuals_against_the_estimate_at_the_climbs_start() -> None:
    plain, anchored = _router(False), _router(True)
    for router in (plain, anchored):
        router.feedback(0, 0, 0.0)  # estimate 0.8 (alpha 8, beta 2): residual -0.8, down 0.8 - 0.05
        assert router.detector is not None and router.detector.stat["down"][0] == pytest.approx(0.75)
        router.feedback(0, 0, 0.0)  # the cell now holds 8 / 11
    assert plain.detector is not None and anchored.detector is not None
    assert plain.detector.stat["down"][0] == pytest.approx(0.75 + 8 / 11 - 0.05)
    assert anchored.detector.stat["down"][0] == pytest.approx(0.75 + 0.8 - 0.05)  # still against 0.8
    assert anchored.posterior.mean() == pytest.approx(plain.posterior.mean())  # detection only: routing unchanged


def test_settings_are_off_by_default_reach_the_router_and_refuse_what_cannot_act(tmp_path: Path) -> None:
    assert not OnlineSettings().change_anchor and OnlineSettings().change_fast_threshold == 0.0
    router = OnlineRouter.from_settings(np.array([[0.8, 0.5]]), [1.0, 2.0], 1.5, OnlineSettings())
    assert router.detector is not None and router.detector.anchor is None and router.detector.fast is None
    knobs = OnlineSettings(change_anchor=True, change_fast_drift=0.2, change_fast_threshold=3.0)
    router = OnlineRouter.from_settings(np.array([[0.8, 0.5]]), [1.0, 2.0], 1.5, knobs)
    assert router.detector is not None and router.detector.anchor is not None and router.detector.fast is not None
    assert (router.detector.fast.drift, router.detector.fast.threshold) == (0.2, 3.0)
    for bad in (
        {"change_anchor": True, "change_model": "proportional"},
        {"change_fast_threshold": 3.0, "change_baseline": "feedback"},
        {"change_fast_threshold": -1.0},
        {"change_fast_drift": -0.1},
    ):
        with pytest.raises(ValidationError):
            OnlineSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flat model"):
        ChangeSettings(anchor=True, model="proportional")
    with pytest.raises(ConfigError, match="change_fast_threshold"):
        AdaptOptions(change_fast_threshold=2.0, change_baseline="feedback")
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    flags = ["--budget-params", "3", "--change-anchor", "--change-model", "proportional"]
    assert main([*argv, *flags, "--json", str(tmp_path / "x.json")]) == 2  # refused before reading anything
    assert not (tmp_path / "x.json").exists()
