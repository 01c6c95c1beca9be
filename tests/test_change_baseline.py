"""The change detector measured against each cell's own feedback: a wrong offline table is no change, a step is.

Exact values derived by hand in the comments: a running mean of constant scores is that constant, and
after a step from 0.8 to 0.5 following 30 scores of 0.8 the mean after j more is 0.5 + 0.3 * 30 / (30 + j).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.router.drift import ChangeSettings, FeedbackBaseline
from coserve.router.online import OnlineRouter, resume
from coserve.store.online_state import read_state, write_state

CATEGORIES = ["chat"]
EXPERTS = ["a", "b"]
# The offline table says expert a scores 0.5; its feedback says 0.8 from the start: a constant table error.
OFFLINE = np.array([[0.5, 0.6]])


def _router(baseline: str) -> OnlineRouter:
    change = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0, baseline=baseline, min_feedback=10)
    return OnlineRouter(OFFLINE, [1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10, max_count=100, change=change)


def test_a_constant_offline_error_fires_the_posterior_baseline_but_not_the_feedback_one() -> None:
    against_posterior, against_feedback = _router("posterior"), _router("feedback")
    # posterior: the n-th residual (from 0) is 0.8 - (5 + 0.8 n) / (10 + n) = 3 / (10 + n), so the up
    # statistic, the sum of (3 / (10 + n) - 0.05), is 0.854 after four scores and 1.018 > 1 after five:
    # a table that was wrong from the start raises an alarm
    for n in range(5):
        assert against_posterior.alarms == 0, n
        against_posterior.feedback(0, 0, 0.8)
    assert against_posterior.alarms == 1
    for _ in range(30):
        against_feedback.feedback(0, 0, 0.8)
    # feedback: the first 10 scores are not tested; every later residual is 0.8 - 0.8 = 0
    assert against_feedback.alarms == 0
    assert against_feedback.detector is not None
    assert against_feedback.detector.stat["up"][0] == 0.0 and against_feedback.detector.stat["down"][0] == 0.0
    assert against_feedback.baseline is not None
    assert against_feedback.baseline.mean[0, 0] == pytest.approx(0.8) and against_feedback.baseline.count[0, 0] == 30


def test_a_step_in_an_experts_own_feedback_fires_within_five_scores() -> None:
    router = _router("feedback")
    for _ in range(30):
        router.feedback(0, 0, 0.8)
    residuals = [-0.3 * 30 / (30 + j) for j in range(5)]  # 0.5 minus the mean of the scores before it
    # the down statistic after k scores is the sum of (-r - 0.05): 0.944 after four, 1.159 > 1 after five
    for _ in range(4):
        router.feedback(0, 0, 0.5)
    assert router.alarms == 0
    router.feedback(0, 0, 0.5)
    assert router.alarms == 1
    # posterior before the alarm: 10 pseudo-counts at 0.5, 30 scores of 0.8 and 5 of 0.5: 31.5 / 45 = 0.7;
    # moved by the estimated shift (the mean of the five residuals) and cut to 2 pseudo-counts
    assert router.posterior.mean()[0, 0] == pytest.approx(0.7 + np.mean(residuals), abs=1e-5)
    assert router.posterior.count()[0, 0] == pytest.approx(2.0, abs=1e-5)
    assert router.baseline is not None and router.baseline.count[0, 0] == 0.0  # a new reference starts
    assert router.posterior.count()[0, 1] == pytest.approx(10.0, abs=1e-5)  # the other expert is untouched


def test_the_feedback_mean_forgets_beyond_its_memory() -> None:
    baseline = FeedbackBaseline(1, 1, min_feedback=1, memory=4)
    assert baseline.residual(0, 0, 1.0) is None  # nothing to compare with yet
    for _ in range(3):
        assert baseline.residual(0, 0, 1.0) == 0.0
    assert baseline.residual(0, 0, 0.0) == -1.0  # 0 - 1; the count stays at 4: the mean moves by 1/4
    assert baseline.count[0, 0] == 4 and baseline.mean[0, 0] == pytest.approx(0.75)


def _save_and_resume(router: OnlineRouter, baseline: str, path: Path) -> OnlineRouter:
    with sqlite3.connect(path) as conn:
        write_state(conn, router.export_state(CATEGORIES, EXPERTS))
    restarted = _router(baseline)
    assert resume(restarted, read_state(path), CATEGORIES, EXPERTS)
    return restarted


def test_the_feedback_baseline_survives_a_restart_and_alarms_as_without_one(tmp_path: Path) -> None:
    uninterrupted, before = _router("feedback"), _router("feedback")
    scores = [0.8] * 30 + [0.5] * 2
    for score in scores:
        uninterrupted.feedback(0, 0, score)
        before.feedback(0, 0, score)
    after = _save_and_resume(before, "feedback", tmp_path / "decisions.db")
    assert after.baseline is not None and after.baseline.count[0, 0] == 32
    for _ in range(3):  # the third of these is the fifth score after the step: the alarm, as uninterrupted
        uninterrupted.feedback(0, 0, 0.5)
        after.feedback(0, 0, 0.5)
    assert after.alarms == uninterrupted.alarms == 1
    np.testing.assert_allclose(after.posterior.mean(), uninterrupted.posterior.mean(), atol=1e-12)


def test_a_state_measured_against_the_other_baseline_resumes_with_a_fresh_detector(tmp_path: Path) -> None:
    before = _router("posterior")
    for _ in range(3):
        before.feedback(0, 0, 0.8)  # the posterior baseline's up statistic stands above 0
    after = _save_and_resume(before, "feedback", tmp_path / "decisions.db")
    assert after.detector is not None and after.detector.stat["up"].tolist() == [0.0, 0.0]
    assert after.baseline is not None and after.baseline.count.tolist() == [[0.0, 0.0]]
    np.testing.assert_allclose(after.posterior.mean(), before.posterior.mean(), atol=1e-12)  # the rest resumes


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"feedback_mean": [[0.8]]}, "another shape"),
        ({"feedback_mean": [[1.5, 0.0]]}, "impossible values"),
        ({"feedback_count": [[-1.0, 0.0]]}, "impossible values"),
        ({"feedback_count": "many"}, "malformed"),
    ],
)
def test_a_corrupt_feedback_baseline_is_refused_with_a_warning_and_changes_nothing(
    broken: dict, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = _router("feedback")
    for _ in range(12):
        before.feedback(0, 0, 0.8)
    state = before.export_state(CATEGORIES, EXPERTS)
    state["change"] = {**state["change"], **broken}
    router = _router("feedback")
    with caplog.at_level(logging.WARNING, "coserve.router"):
        assert not resume(router, state, CATEGORIES, EXPERTS)
    assert "not resumed" in caplog.text and reason in caplog.text
    assert router.snapshot.version == 0 and router.baseline is not None and router.baseline.count.sum() == 0
    np.testing.assert_allclose(router.posterior.mean(), OFFLINE, atol=1e-6)


def test_the_setting_reaches_the_router_and_the_benchmark() -> None:
    settings = OnlineSettings(change_baseline="feedback", change_min_feedback=7)
    router = OnlineRouter.from_settings(OFFLINE, [1.0, 1.0], 1.0, settings)
    assert router.baseline is not None and router.baseline.min_feedback == 7
    assert OnlineRouter.from_settings(OFFLINE, [1.0, 1.0], 1.0, OnlineSettings()).baseline is None  # the default
    options = AdaptOptions(change_baseline="feedback", change_min_feedback=7)
    assert options.online().change_baseline == "feedback" and options.online().change_min_feedback == 7
    with pytest.raises(ValidationError):
        OnlineSettings(change_baseline="table")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baseline"):
        ChangeSettings(baseline="table")
