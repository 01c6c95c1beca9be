"""The online router's state survives a restart; a missing, corrupt or foreign state falls back with a warning."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from coserve.router.online import ChangeSettings, OnlineRouter, resume
from coserve.store.log import DecisionLog
from coserve.store.online_state import read_state, write_state

CATEGORIES = ["chat", "math"]
EXPERTS = ["small", "big"]
OFFLINE = np.array([[0.8, 0.85], [0.2, 0.9]])


def _router() -> OnlineRouter:
    return OnlineRouter(OFFLINE, [1.0, 3.0], target=2.0, explore_cap=0.0, prior_strength=10)


def _trained() -> OnlineRouter:
    router = _router()
    for _ in range(4):
        router.feedback(0, 1, 0.0)  # "big" is bad at chat after all
    for expert in (1, 1, 0):
        router.served(expert)
    return router


def test_state_saved_beside_the_decision_log_is_resumed_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    before = _trained()
    log = DecisionLog(path).start()
    log.call(lambda conn: write_state(conn, before.export_state(CATEGORIES, EXPERTS))).result(10)
    log.close()
    after = _router()
    assert resume(after, read_state(path), CATEGORIES, EXPERTS)
    assert after.snapshot.version == before.snapshot.version == 7
    assert after.controller.weight == pytest.approx(before.controller.weight)
    np.testing.assert_allclose(after.posterior.mean(), before.posterior.mean())
    assert after.snapshot.assignment == before.snapshot.assignment == (0, 1)  # the learned map, not offline
    assert _router().snapshot.assignment == (1, 1)
    with sqlite3.connect(path) as conn:  # the log's own tables are untouched
        assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (0,)


def test_a_second_save_replaces_the_first(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    router = _trained()
    with sqlite3.connect(path) as conn:
        write_state(conn, router.export_state(CATEGORIES, EXPERTS))
        router.served(0)
        write_state(conn, router.export_state(CATEGORIES, EXPERTS))
        assert conn.execute("SELECT count(*), max(version) FROM online_state").fetchone() == (1, 8)
    state = read_state(path)
    assert state is not None and state["version"] == 8


def test_missing_file_or_row_falls_back_saying_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "coserve.store"):  # a first start: info (test_online_leftovers13)
        assert read_state(tmp_path / "absent.db") is None
        DecisionLog(tmp_path / "empty.db").start().close()
        assert read_state(tmp_path / "empty.db") is None
    assert "does not exist" in caplog.text and "none saved" in caplog.text
    assert not (tmp_path / "absent.db").exists()  # reading never creates the file


def test_corrupt_state_falls_back_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "decisions.db"
    with sqlite3.connect(path) as conn:
        write_state(conn, {"version": 1})
        conn.execute("UPDATE online_state SET body = '{not json'")
    with caplog.at_level(logging.WARNING, "coserve.store"):
        assert read_state(path) is None
    assert "corrupt" in caplog.text
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, "coserve.store"):
        assert read_state(tmp_path / "garbage.db") is None
    assert "cannot read" in caplog.text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"experts": ["small", "other"]}, "other categories or experts"),
        ({"format": 99}, "format"),
        ({"alpha": [[1.0, 1.0]]}, "posteriors are"),
        ({"beta": [[1.0, -1.0], [1.0, 1.0]]}, "finite and positive"),
        ({"version": -3}, "version"),
        ({"weight": "heavy"}, "malformed"),
    ],
)
def test_a_state_that_does_not_fit_is_refused_and_changes_nothing(
    change: dict, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = {**_trained().export_state(CATEGORIES, EXPERTS), **change}
    router = _router()
    with caplog.at_level(logging.WARNING, "coserve.router"):
        assert not resume(router, state, CATEGORIES, EXPERTS)
    assert reason in caplog.text
    assert router.snapshot.version == 0 and router.controller.weight == 0.0
    np.testing.assert_allclose(router.posterior.mean(), OFFLINE, atol=1e-6)


def test_feedback_once_stores_the_first_score_of_a_logged_request_only(tmp_path: Path) -> None:
    from coserve.store.log import DecisionRow

    log = DecisionLog(tmp_path / "decisions.db").start()
    log.record(DecisionRow("r1", 1.0, "coserve", "big", "code", 0.9, "routed", None, "200", 0.1, 3, 4, map_version=7))
    assert log.feedback_once("r1", -1.0).result(10) == ("stored", "code", "big", None)
    assert log.feedback_once("r1", 1.0).result(10) == ("duplicate", None, "", None)
    assert log.feedback_once("r2", 1.0).result(10) == ("unknown", None, "", None)
    log.close()
    with sqlite3.connect(tmp_path / "decisions.db") as conn:
        assert conn.execute("SELECT id, score FROM feedback").fetchall() == [("r1", -1.0)]
        assert conn.execute("SELECT map_version FROM decisions").fetchall() == [(7,)]


def test_an_older_log_gains_the_map_version_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE decisions (id TEXT PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL)")
        conn.execute("INSERT INTO decisions VALUES ('old', 1.0, 'coserve')")
    DecisionLog(path).start().close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(decisions)")]
        assert columns[-3:] == ["map_version", "cascade", "predicted"]
        assert conn.execute("SELECT id, map_version FROM decisions").fetchall() == [("old", None)]


def test_an_older_log_is_read_without_the_map_version_column(tmp_path: Path) -> None:
    from coserve.store.log import query_decisions

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE decisions (id TEXT PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL, expert TEXT)"
        )
        conn.execute("CREATE TABLE feedback (seq INTEGER PRIMARY KEY, id TEXT, time REAL, score REAL)")
        conn.execute("INSERT INTO decisions VALUES ('old', 1.0, 'coserve', 'big')")
    assert query_decisions(path) == [{"id": "old", "time": 1.0, "model": "coserve", "expert": "big", "feedback": None}]


def test_the_change_detectors_statistics_survive_a_restart(tmp_path: Path) -> None:
    change = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0)

    def detecting() -> OnlineRouter:
        return OnlineRouter(OFFLINE, [1.0, 3.0], target=2.0, explore_cap=0.0, prior_strength=10, change=change)

    before = detecting()
    before.feedback(0, 0, 0.3)  # residual 0.3 - 0.8 = -0.5: the down statistic stands at 0.45
    path = tmp_path / "decisions.db"
    with sqlite3.connect(path) as conn:
        write_state(conn, before.export_state(CATEGORIES, EXPERTS))
    after = detecting()
    assert resume(after, read_state(path), CATEGORIES, EXPERTS)
    assert after.detector is not None and after.detector.stat["down"][0] == pytest.approx(0.45)
    older = _router().export_state(CATEGORIES, EXPERTS)  # saved without a detector
    fresh = detecting()
    assert resume(fresh, older, CATEGORIES, EXPERTS)
    assert fresh.detector is not None and fresh.detector.stat["down"].tolist() == [0.0, 0.0]
