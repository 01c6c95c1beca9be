"""The change detector's running reference (a self-starting CUSUM, session 12, branch bias12), exact values
derived by hand: each residual less the expert's running mean of its own residuals (read once it holds
enough), learnt only while the CUSUM is quiet, restarted where an alarm moves the expert's means, saved
and resumed with the detector (a state without fitting references resumes with them at 0), validated."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.cli import main
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeDetector
from coserve.router.drift_reference import REFERENCE_MIN_FEEDBACK, REFERENCE_QUIET, RunningReference
from coserve.router.drift_weighted import ProportionalDetector
from coserve.router.online import ChangeSettings, OnlineRouter, resume
from coserve.store.log import DecisionLog
from coserve.store.online_state import read_state, write_state


def test_the_cusum_reads_each_residual_less_the_running_reference_learnt_while_quiet() -> None:
    assert REFERENCE_MIN_FEEDBACK == 100 and REFERENCE_QUIET == 0.5
    # memory 2: the reference is read once it holds min(100, 2) = 2 residuals; the quiet level is 0.5 x 1.0
    reference = RunningReference(1, memory=2.0)
    detector = ChangeDetector(1, drift=0.1, threshold=1.0, reference=reference)
    # r = -0.2: no reference yet (0): down 0.2 - 0.1 = 0.1; learnt: mean -0.2 (1 residual)
    assert detector.observe(0, -0.2) is None
    assert detector.stat["down"][0] == pytest.approx(0.1) and reference.mean[0] == pytest.approx(-0.2)
    # r = -0.4: still 1 < 2 (0): down 0.1 + 0.4 - 0.1 = 0.4; learnt (0.1 < 0.5): mean -0.2 - 0.2 / 2 = -0.3
    assert detector.observe(0, -0.4) is None
    assert detector.stat["down"][0] == pytest.approx(0.4) and reference.mean[0] == pytest.approx(-0.3)
    # r = -0.6 against -0.3: down 0.4 + 0.3 - 0.1 = 0.6; learnt (0.4 < 0.5), weight 1 / min(3, 2): -0.45
    assert detector.observe(0, -0.6) is None
    assert detector.stat["down"][0] == pytest.approx(0.6) and reference.mean[0] == pytest.approx(-0.45)
    assert reference.count[0] == 2.0
    # r = -0.6 against -0.45: down 0.6 + 0.15 - 0.1 = 0.65; not learnt (0.6 >= 0.5): the reference stays
    assert detector.observe(0, -0.6) is None
    assert detector.stat["down"][0] == pytest.approx(0.65) and reference.mean[0] == pytest.approx(-0.45)
    # r = -1.0 against -0.45: down 0.65 + 0.55 - 0.1 = 1.1 > 1: an alarm; the shift is the mean residual
    # against the reference since the side stood at 0: (-0.2 - 0.4 - 0.3 - 0.15 - 0.55) / 5 = -0.32
    assert detector.observe(0, -1.0) == pytest.approx(-0.32)
    assert detector.stat["up"][0] == 0.0 and detector.stat["down"][0] == 0.0
    # without a reference the same residuals alarm one feedback sooner: 0.1, 0.4, 0.9, then 1.4 > 1
    plain = ChangeDetector(1, drift=0.1, threshold=1.0)
    assert [plain.observe(0, r) for r in (-0.2, -0.4, -0.6)] == [None, None, None]
    assert plain.observe(0, -0.6) == pytest.approx(-0.45)


def test_the_proportional_model_weighs_the_residual_less_its_reference() -> None:
    reference = RunningReference(1, memory=1.0)  # read after 1 residual; each new one replaces it
    detector = ProportionalDetector(1, drift=0.1, threshold=10.0, reference=reference)
    # e = 0.8, r = -0.6, no reference yet: down 0.8 x 0.6 - 0.1 x 0.64 = 0.416; learnt: -0.6
    detector.observe(0, -0.6, 0.8)
    assert detector.stat["down"][0] == pytest.approx(0.416) and reference.mean[0] == pytest.approx(-0.6)
    # the same again, against -0.6: 0.8 x 0 - 0.064 = -0.064: down 0.352
    detector.observe(0, -0.6, 0.8)
    assert detector.stat["down"][0] == pytest.approx(0.352)


def _router(threshold: float, reference: str = "running", memory: float = 2.0) -> OnlineRouter:
    # one category, two experts at 0.4 and 0.8, prior strength 10; only a drop rebases (upward off)
    change = ChangeSettings(
        drift=0.05, threshold=threshold, reset_count=2.0, upward=False, reference=reference, reference_memory=memory
    )
    return OnlineRouter(np.array([[0.4, 0.8]]), [1.0, 3.0], 2.0, prior_strength=10.0, max_count=100.0, change=change)


def test_a_reference_restarts_where_an_alarm_moves_the_experts_means_only() -> None:
    router = _router(threshold=0.3)
    assert router.detector is not None and router.detector.reference is not None
    reference = router.detector.reference
    # expert 0 (0.4) scores 1: r = 0.6, up 0.55 > 0.3: an alarm of a rise, which does not rebase (upward off):
    # the reference keeps the residual it learnt before the alarm
    router.feedback(0, 0, 1.0)
    assert len(router.alarm_log) == 1 and router.alarms == 0
    assert reference.mean[0] == pytest.approx(0.6) and reference.count[0] == 1.0
    # expert 1 (0.8) scores 0.2: r = -0.6, down 0.55 > 0.3: a drop moves its means, and its reference restarts
    router.feedback(0, 1, 0.2)
    assert router.alarms == 1 and router.alarm_log[1]["shift"] == pytest.approx(-0.6)
    assert reference.mean[1] == 0.0 and reference.count[1] == 0.0
    assert reference.mean[0] == pytest.approx(0.6)  # the other expert's untouched


def test_the_references_resume_from_the_decision_logs_store(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    before = _router(threshold=5.0)
    before.feedback(0, 1, 0.2)  # r = -0.6: down 0.55; the reference learns -0.6 (1 residual)
    log = DecisionLog(path).start()
    log.call(lambda conn: write_state(conn, before.export_state(["c"], ["a", "b"]))).result(10)
    log.close()
    after = _router(threshold=5.0)
    assert resume(after, read_state(path), ["c"], ["a", "b"])
    assert after.detector is not None and after.detector.reference is not None
    assert after.detector.stat["down"][1] == pytest.approx(0.55)
    assert after.detector.reference.mean.tolist() == pytest.approx([0.0, -0.6])
    assert after.detector.reference.count.tolist() == [0.0, 1.0]


def test_a_state_without_fitting_references_resumes_with_them_at_0(caplog: pytest.LogCaptureFixture) -> None:
    plain = _router(threshold=5.0, reference="zero")
    plain.feedback(0, 1, 0.2)  # down 0.55, no reference saved
    state = plain.export_state(["c"], ["a", "b"])
    assert "reference" not in state["change"]
    running = _router(threshold=5.0)
    with caplog.at_level(logging.WARNING, logger="coserve.router"):
        assert resume(running, state, ["c"], ["a", "b"])
    assert caplog.text == ""  # saved without references: they start at 0, nothing to warn about
    assert running.detector is not None and running.detector.reference is not None
    assert running.detector.stat["down"][1] == pytest.approx(0.55)
    assert running.detector.reference.count.tolist() == [0.0, 0.0]
    # references of another shape (three experts): the statistics resume, the references restart with a warning
    state["change"] = {**state["change"], "reference": [0.1, 0.2, 0.3], "reference_count": [5.0, 5.0, 5.0]}
    again = _router(threshold=5.0)
    with caplog.at_level(logging.WARNING, logger="coserve.router"):
        assert resume(again, state, ["c"], ["a", "b"])
    assert "saved references do not fit" in caplog.text
    assert again.detector is not None and again.detector.reference is not None
    assert again.detector.stat["down"][1] == pytest.approx(0.55)
    assert again.detector.reference.mean.tolist() == [0.0, 0.0]
    # a longer memory's counts are capped at this router's memory (2)
    state["change"] = {**state["change"], "reference": [0.1, -0.2], "reference_count": [5.0, 1.0]}
    assert resume(again, state, ["c"], ["a", "b"])
    assert again.detector is not None and again.detector.reference is not None
    assert again.detector.reference.count.tolist() == [2.0, 1.0]
    # a router without a running reference resumes a state with references: they are not read
    assert resume(plain, state, ["c"], ["a", "b"]) and plain.detector is not None and plain.detector.reference is None


def test_the_settings_build_the_reference_and_bad_ones_are_refused_with_a_clear_error() -> None:
    router = OnlineRouter.from_settings(
        np.array([[0.4, 0.8]]), [1.0, 3.0], 2.0, OnlineSettings(change_reference="running", change_reference_memory=300)
    )
    assert router.detector is not None and router.detector.reference is not None
    assert router.detector.reference.memory == 300.0 and router.detector.reference.least == 100.0
    assert OnlineRouter.from_settings(np.array([[0.4]]), [1.0], 2.0, OnlineSettings()).detector.reference is None  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="change_reference"):
        OnlineSettings(change_reference="mean")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="change_reference_memory"):
        OnlineSettings(change_reference_memory=0.5)
    with pytest.raises(ValueError, match="reference must be one of"):
        ChangeSettings(reference="mean")
    with pytest.raises(ValueError, match="reference_memory"):
        ChangeSettings(reference_memory=0.0)
    with pytest.raises(ConfigError, match="change_reference_memory"):
        AdaptOptions(change_reference="running", change_reference_memory=0.0)
    assert AdaptOptions(change_reference="running").online().change_reference == "running"


def test_bench_adapt_refuses_a_bad_reference_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    argv += ["--budget-params", "3", "--json", str(tmp_path / "x.json")]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--change-reference", "mean"])
    assert exited.value.code == 2 and "invalid choice: 'mean'" in capsys.readouterr().err
    assert main([*argv, "--change-reference", "running", "--change-reference-memory", "0"]) == 2
    assert "change_reference_memory" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
