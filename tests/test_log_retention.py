"""Decision-log retention (server.log.retention) on real SQLite files: the settings, which rows a
batch deletes (age, row count, the one-hour floor, feedback with its decision), the writer's
background pruning and its counts across a restart, feedback and /metrics on a pruned log,
``coserve log prune``, and the cluster's decision-log deployment running the same writer."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HELD_OUT, write_library
from fastapi.testclient import TestClient
from test_cluster_state import Handle

from coserve.cli import main
from coserve.config import load_library
from coserve.distributed.shared_log import DecisionLogService, SharedDecisionLog
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.server.app import create_app
from coserve.store.log import DecisionLog, DecisionRow, connect
from coserve.store.retention import PruneStats, Retention, prune_all, prune_batch

HOUR, DAY = 3600.0, 86400.0
NOW = 1_900_000_000.0  # a fixed "now" for the pure batch tests


def _row(request_id: str, at: float) -> DecisionRow:
    return DecisionRow(request_id, at, "coserve", "small", "chat", 0.9, "routed", None, "200", 0.01, 3, 4)


def _fill(db: Path, ages_s: dict[str, float], now: float, scored: tuple[str, ...] = ()) -> None:
    """Rows ``id -> age in seconds`` (before ``now``), and one feedback score for each of ``scored``."""
    conn = connect(db)
    with conn:
        for request_id, age in ages_s.items():
            conn.execute(
                "INSERT INTO decisions (id, time, model, expert, status) VALUES (?, ?, 'coserve', 'small', '200')",
                (request_id, now - age),
            )
        for request_id in scored:
            conn.execute("INSERT INTO feedback (id, time, score) VALUES (?, ?, 1.0)", (request_id, now))
    conn.close()


def _ids(db: Path, table: str = "decisions") -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return sorted(row[0] for row in conn.execute(f"SELECT id FROM {table}"))
    finally:
        conn.close()


# Ten old rows, a day apart (1..10 days old), and three recent ones (10, 20, 30 minutes old).
OLD = {f"old{d:02d}": d * DAY for d in range(1, 11)}
RECENT = {f"new{m}": m * 60.0 for m in (10, 20, 30)}


@pytest.mark.parametrize(
    ("retention", "value", "expected"),
    [
        ({"max_age": "7d"}, "max_age", 7 * DAY),
        ({"max_age": "1h", "max_rows": 5}, "max_age", HOUR),
        ({"max_age": 7200}, "max_age", 7200.0),
        ({"max_age": "2w"}, "max_age", 14 * DAY),
        ({"max_rows": 1000}, "max_rows", 1000),
    ],
)
def test_retention_settings_are_read(tmp_path: Path, retention: dict[str, Any], value: str, expected: float) -> None:
    library = load_library(write_library(tmp_path, server={"log": {"retention": retention}}))
    settings = library.server.log.retention
    assert settings is not None and getattr(settings, value) == expected
    assert load_library(write_library(tmp_path, filename="plain.yaml")).server.log.retention is None  # default off


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        ({"max_age": "30m"}, "under the 1 h floor"),
        ({"max_age": "a week"}, "not a duration"),
        ({"max_rows": 0}, "greater than or equal to 1"),
        ({}, "give max_age, max_rows or both"),
        ({"max_days": 7}, "max_days"),
    ],
)
def test_bad_retention_settings_name_the_key(tmp_path: Path, retention: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_library(write_library(tmp_path, server={"log": {"retention": retention}}))
    assert "server.log.retention" in error.value.message and message in error.value.message


def test_a_batch_deletes_rows_past_the_age_with_their_feedback(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    _fill(db, OLD | RECENT, NOW, scored=("old09", "old03"))
    conn = connect(db)
    deleted = prune_batch(conn, Retention(max_age_s=7 * DAY), kept=13, now=NOW)
    conn.close()
    assert deleted == 3  # 8, 9 and 10 days old
    assert _ids(db) == sorted(set(OLD) - {"old08", "old09", "old10"} | set(RECENT))
    assert _ids(db, "feedback") == ["old03"]  # old09's score went with it


def test_a_row_limit_deletes_the_oldest_but_never_a_row_younger_than_an_hour(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    _fill(db, OLD | RECENT, NOW)
    conn = connect(db)
    assert prune_batch(conn, Retention(max_rows=11), kept=13, now=NOW) == 2  # the two oldest
    assert _ids(db) == sorted(set(OLD) - {"old10", "old09"} | set(RECENT))
    # Keep 1 of 11: the eight old ones go, the three recent ones stay (the floor wins over the limit).
    assert prune_all(conn, Retention(max_rows=1), now=NOW) == (8, 3)
    conn.close()
    assert _ids(db) == sorted(RECENT)


def test_batches_are_bounded(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    _fill(db, OLD, NOW)
    retention = Retention(max_age_s=2.5 * DAY, batch_rows=3)  # 3..10 days old go: 8 rows
    conn = connect(db)
    assert [prune_batch(conn, retention, kept=0, now=NOW) for _ in range(4)] == [3, 3, 2, 0]
    conn.close()
    assert _ids(db) == ["old01", "old02"]


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"not within 30 s: {what}"
        time.sleep(0.02)


def _stats(log: DecisionLog) -> PruneStats | None:
    return asyncio.run(log.prune_stats())


def test_the_writer_prunes_in_the_background_and_counts_again_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    now = time.time()
    _fill(db, OLD, now)
    retention = Retention(max_age_s=4.5 * DAY, batch_rows=2, interval_s=3600)  # 5..10 days old: 6 rows
    log = DecisionLog(db, retention=retention)
    assert _stats(log) is None  # not counted before the writer starts
    log.start()
    for i in range(5):
        log.record(_row(f"live{i}", time.time()))
    log.flush()
    _wait_for(lambda: _stats(log) == PruneStats(6, 9), "6 pruned (3 batches), 4 old + 5 live kept")
    log.close()
    assert _ids(db) == sorted({"old01", "old02", "old03", "old04"} | {f"live{i}" for i in range(5)})

    _fill(db, {"stale": 20 * DAY}, time.time())  # written while no writer ran
    restarted = DecisionLog(db, retention=retention).start()
    restarted.flush()  # the first batch runs before the first call
    assert _stats(restarted) == PruneStats(1, 9)  # counted from the file, not carried over
    restarted.close()
    unlimited = DecisionLog(db).start()
    assert _stats(unlimited) is None  # without retention: nothing counted
    unlimited.close()


def test_the_writer_counts_again_after_another_process_changed_the_file(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    _fill(db, {"a": DAY, "b": DAY}, time.time())
    log = DecisionLog(db, retention=Retention(max_rows=1000, interval_s=0.05)).start()
    log.flush()
    assert _stats(log) == PruneStats(0, 2)
    _fill(db, {"c": HOUR, "d": HOUR, "e": HOUR}, time.time())  # say, a second writer
    _wait_for(lambda: _stats(log) == PruneStats(0, 5), "the 3 rows another connection wrote counted")
    conn = connect(db)
    assert prune_all(conn, Retention(max_rows=1), now=time.time() + 2 * HOUR) == (4, 1)  # coserve log prune
    conn.close()
    _wait_for(lambda: _stats(log) == PruneStats(0, 1), "the 4 rows another connection deleted counted")
    log.close()


def test_feedback_on_a_pruned_decision_is_a_404_and_metrics_count(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    db = tmp_path / "log.sqlite"
    _fill(db, {"chatcmpl-old": 2 * DAY, "chatcmpl-kept": 2 * HOUR}, time.time(), scored=("chatcmpl-old",))
    engine = make_engine(server={"log": {"path": str(db), "retention": {"max_age": "1d"}}})
    app = create_app(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        fresh = client.post(
            "/v1/chat/completions",
            json={"model": "coserve", "max_tokens": 4, "messages": [{"role": "user", "content": HELD_OUT["chat"]}]},
        ).json()["id"]
        pruned = client.post("/v1/feedback", json={"id": "chatcmpl-old", "score": 1})
        unknown = client.post("/v1/feedback", json={"id": "chatcmpl-never", "score": 1})
        assert pruned.status_code == unknown.status_code == 404
        assert pruned.json()["error"]["code"] == unknown.json()["error"]["code"] == "request_not_found"
        assert "retention" in pruned.json()["error"]["message"]
        assert client.post("/v1/feedback", json={"id": "chatcmpl-kept", "score": 1}).status_code == 200
        assert client.post("/v1/feedback", json={"id": fresh, "score": -1}).status_code == 200
        metrics = client.get("/metrics").text
    assert "coserve_decision_log_pruned_total 1.0" in metrics.splitlines()
    assert "coserve_decision_log_rows 2.0" in metrics.splitlines()  # the kept old row and the fresh one
    assert "# TYPE coserve_decision_log_pruned_total counter" in metrics
    assert _ids(db) == sorted(["chatcmpl-kept", fresh])
    assert _ids(db, "feedback") == sorted(["chatcmpl-kept", fresh])


def test_metrics_leave_retention_out_when_it_is_off(make_engine: Callable[..., Engine]) -> None:
    with TestClient(create_app(make_engine()), raise_server_exceptions=False) as client:
        assert "coserve_decision_log" not in client.get("/metrics").text


def test_log_prune_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "d.sqlite"
    _fill(db, OLD | RECENT, time.time())
    library = write_library(tmp_path, server={"log": {"path": "d.sqlite", "retention": {"max_age": "8d"}}})
    assert main(["log", "prune", "--library", str(library)]) == 0  # the library's file and limits
    assert capsys.readouterr().out.strip() == f"coserve: 3 decisions pruned from {db}, 10 kept"
    assert main(["log", "prune", "--library", str(library), "--db", str(db), "--max-rows", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"coserve: 5 decisions pruned from {db}, 5 kept"
    assert _ids(db) == sorted({"old01", "old02"} | set(RECENT))
    assert main(["log", "prune", "--library", str(library), "--max-age", "10m"]) == 2
    assert "under the 1 h floor" in capsys.readouterr().err
    plain = write_library(tmp_path, filename="plain.yaml", server={"log": {"path": "d.sqlite"}})
    assert main(["log", "prune", "--library", str(plain)]) == 2  # no limits anywhere
    assert capsys.readouterr().err.strip() == (
        f"coserve: error: {plain} sets no server.log.retention: give --max-age, --max-rows or both"
    )
    assert main(["log", "prune", "--library", str(plain), "--db", str(tmp_path / "none.sqlite")]) == 2


def test_the_clusters_log_deployment_prunes_with_the_same_writer(tmp_path: Path) -> None:
    db = tmp_path / "one.sqlite"
    _fill(db, {"old": 3 * DAY, "recent": 2 * HOUR}, time.time())
    library = write_library(tmp_path, server={"log": {"path": str(db), "retention": {"max_age": "1d"}}})
    service = DecisionLogService(str(library))
    handle = Handle(service)

    async def run() -> tuple[PruneStats | None, PruneStats | None]:
        shared = await SharedDecisionLog(handle, store_text=False, retention=True, flush_interval_s=0.01).open()
        unasked = await SharedDecisionLog(handle, store_text=False).open()  # a library without retention
        calls = handle.calls
        assert await unasked.prune_stats() is None and handle.calls == calls  # no call at each scrape
        shared.start()
        shared.record(_row("live", time.time()))
        await shared.flush()
        await service.flush()
        seen = await shared.prune_stats()
        handle.down = True  # the deployment restarting: /metrics leaves the figures out
        missing = await shared.prune_stats()
        handle.down = False
        await shared.aclose()
        return seen, missing

    assert asyncio.run(run()) == (PruneStats(1, 2), None)
    service.log.close()
    assert _ids(db) == ["live", "recent"]
