"""The decision log: rows per request, WAL, feedback, `coserve log` export, texts, and kill -9 safety."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HELD_OUT
from fastapi.testclient import TestClient

from coserve.cli import main
from coserve.engine.engine import Engine
from coserve.server.app import create_app
from coserve.store.log import BATCH_ROWS, DecisionLog, DecisionRow

URL = "/v1/chat/completions"


def body(content: str, model: str = "coserve", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 6, **extra}


def rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY time")]
    finally:
        conn.close()


def test_rows_after_requests(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    db = tmp_path / "log" / "decisions.sqlite"
    engine = make_engine(server={"log": {"path": str(db)}})
    app = create_app(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        done = client.post(URL, json=body(HELD_OUT["code"])).json()
        streamed = client.post(URL, json=body(HELD_OUT["math"], stream=True))
        assert streamed.status_code == 200
        assert client.post(URL, json=body(HELD_OUT["chat"], temperature=9)).status_code == 422  # not routed: no row
        assert client.post(URL, json=body(HELD_OUT["chat"], model="nope")).status_code == 404
        app.state.decision_log.flush()
        logged = rows(db)
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    assert [(r["expert"], r["category"], r["status"]) for r in logged] == [
        ("coder", "code", "200"),
        ("big", "math", "200"),
    ]
    first = logged[0]
    assert first["id"] == done["id"] and first["model"] == "coserve" and first["reason"] == "routed"
    assert first["prompt_tokens"] == done["usage"]["prompt_tokens"]
    assert first["completion_tokens"] == done["usage"]["completion_tokens"] == 6
    assert 0 < first["confidence"] <= 1 and first["latency_s"] > 0 and abs(first["time"] - time.time()) < 60
    assert first["fallback_from"] is None
    assert logged[1]["completion_tokens"] == 6  # a stream's usage is logged too
    assert all(r["prompt"] is None and r["completion"] is None for r in logged)  # texts only if asked


def test_error_and_fallback_rows(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"coder": {"fail_generate": True}})
    app = create_app(engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post(URL, json=body(HELD_OUT["code"])).status_code == 200  # falls back
        assert client.post(URL, json=body(HELD_OUT["code"], model="coder")).status_code == 502
        app.state.decision_log.flush()
        logged = rows(app.state.decision_log.path)
    assert logged[0]["fallback_from"] == "coder" and logged[0]["expert"] != "coder"
    assert (logged[1]["expert"], logged[1]["status"], logged[1]["reason"]) == ("coder", "502", "pinned")


def test_texts_stored_only_when_asked(make_engine: Callable[..., Engine]) -> None:
    app = create_app(make_engine(server={"log": {"store_text": True}}))
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post(URL, json=body(HELD_OUT["code"])).json()["choices"][0]["message"]["content"]
        streamed = client.post(URL, json=body(HELD_OUT["chat"], stream=True))
        assert streamed.status_code == 200
    logged = rows(app.state.decision_log.path)  # the lifespan's exit flushed the queue
    assert json.loads(logged[0]["prompt"]) == [{"role": "user", "content": HELD_OUT["code"]}]
    assert logged[0]["completion"] == answer
    assert logged[1]["completion"].startswith("small says:")


def test_feedback(make_engine: Callable[..., Engine], cache: Path) -> None:
    app = create_app(make_engine())
    with TestClient(app, raise_server_exceptions=False) as client:
        request_id = client.post(URL, json=body(HELD_OUT["chat"])).json()["id"]
        ok = client.post("/v1/feedback", json={"id": request_id, "score": 0.5})  # no flush needed
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"object": "feedback", "id": request_id, "score": 0.5}
        assert client.post("/v1/feedback", json={"id": request_id, "score": -1}).status_code == 200
        unknown = client.post("/v1/feedback", json={"id": "chatcmpl-nope", "score": 1})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "id"
        for score in (1.5, -2):
            out_of_range = client.post("/v1/feedback", json={"id": request_id, "score": score})
            assert out_of_range.status_code == 422 and out_of_range.json()["error"]["param"] == "score"
        assert client.post("/v1/feedback", json={"id": request_id}).status_code == 400
        assert client.post("/v1/feedback", json={"id": request_id, "score": "good"}).status_code == 400
    assert app.state.decision_log.path == cache / "decisions.sqlite"  # the default place
    conn = sqlite3.connect(cache / "decisions.sqlite")
    assert conn.execute("SELECT id, score FROM feedback ORDER BY seq").fetchall() == [
        (request_id, 0.5),
        (request_id, -1.0),
    ]
    conn.close()


def test_log_command_exports(
    make_engine: Callable[..., Engine], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "d.sqlite"
    app = create_app(make_engine(server={"log": {"path": str(db)}}))
    with TestClient(app, raise_server_exceptions=False) as client:
        ids = [client.post(URL, json=body(HELD_OUT[c])).json()["id"] for c in ("code", "math", "chat", "code")]
        assert client.post("/v1/feedback", json={"id": ids[0], "score": 1}).status_code == 200
    assert main(["log", "--db", str(db)]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in exported] == ids
    assert exported[0]["feedback"] == 1.0 and exported[1]["feedback"] is None
    assert exported[0]["time"].endswith("+00:00") and "prompt" in exported[0]

    out = tmp_path / "coder.csv"
    assert main(["log", "--db", str(db), "--expert", "coder", "--format", "csv", "--out", str(out)]) == 0
    with out.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["id"] for r in table] == [ids[0], ids[3]] and {r["expert"] for r in table} == {"coder"}

    assert main(["log", "--db", str(db), "--limit", "2"]) == 0  # the oldest two
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ids[:2]
    assert main(["log", "--db", str(db), "--last", "3"]) == 0  # the latest three, listed oldest first
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ids[1:]
    assert main(["log", "--db", str(db), "--expert", "coder", "--last", "1"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [ids[3]]
    assert main(["log", "--db", str(db), "--since", "2999-01-01T00:00:00Z"]) == 0
    assert capsys.readouterr().out == ""
    # no row: the CSV still has every column (docs/operations.md's list, then feedback), not just "id"
    assert main(["log", "--db", str(db), "--since", "2999-01-01T00:00:00Z", "--format", "csv"]) == 0
    assert capsys.readouterr().out == (
        "id,time,model,expert,category,confidence,reason,fallback_from,status,latency_s,prompt_tokens,"
        "completion_tokens,map_version,cascade,predicted,prompt,completion,feedback\r\n"
    )
    assert main(["log", "--db", str(db), "--since", "yesterday"]) == 2
    assert main(["log", "--db", str(tmp_path / "missing.sqlite")]) == 2


def test_log_command_refuses_what_it_cannot_read(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for limit in ("0", "-1"):  # -1 gave every row (SQLite's LIMIT -1)
        assert main(["log", "--db", str(cache / "none.sqlite"), "--limit", limit]) == 2
        expected = f"coserve: error: --limit {limit}: give 1 or more (leave it out for every row)\n"
        assert capsys.readouterr().err == expected
    assert main(["log", "--db", str(cache / "none.sqlite"), "--last", "0"]) == 2
    assert "--last 0: give 1 or more" in capsys.readouterr().err
    assert main(["log", "--db", str(cache / "none.sqlite"), "--last", "2", "--limit", "2"]) == 2
    assert capsys.readouterr().err == (
        "coserve: error: --limit keeps the oldest rows and --last the newest: give one of them\n"
    )
    assert main(["log"]) == 2  # the default file is missing: say where else the log may be
    assert capsys.readouterr().err == (
        f"coserve: error: no decision log at {cache / 'decisions.sqlite'}; "
        "a library's server.log.path keeps it elsewhere: name that file with --db\n"
    )


def test_batches_and_queue_bound(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "x.sqlite", max_queue_rows=10)
    for i in range(12):  # not started: the queue fills, and the excess is dropped, not waited for
        log.record(_row(i))
    assert log.dropped == 2
    log.start()
    log.close()
    assert len(rows(tmp_path / "x.sqlite")) == 10


def _row(i: int) -> DecisionRow:
    return DecisionRow(
        f"r{i}", time.time(), "coserve", "small", "chat", 0.9, "routed", None, "200", 0.01, 3, 4, "p", "c"
    )


_WRITER = """
import sys, time
from coserve.store.log import DecisionLog, DecisionRow
log = DecisionLog(sys.argv[1]).start()
i = 0
while True:
    log.record(DecisionRow(f"r{i}", time.time(), "coserve", "small", "chat", 0.9, "routed", None, "200", 0.01, 3, 4))
    i += 1
    print(i, flush=True)
    time.sleep(0.001)
"""


def test_kill_9_loses_at_most_one_batch(tmp_path: Path) -> None:
    db = tmp_path / "killed.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    enqueued = 0
    deadline = time.monotonic() + 30
    while enqueued < 1500 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        assert line, "the writer died"
        enqueued = int(line)
    os.kill(writer.pid, signal.SIGKILL)
    rest = writer.stdout.read()
    writer.wait()
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):
            enqueued = int(line)
    assert writer.returncode == -signal.SIGKILL
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        written = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
    finally:
        conn.close()
    print(f"kill -9: {enqueued} rows enqueued, {written} recovered, integrity ok")  # figures for docs/operations.md
    assert enqueued - BATCH_ROWS <= written <= enqueued, (enqueued, written)


def test_disk_full_keeps_rows_until_the_database_takes_them(tmp_path: Path) -> None:
    """SQLite's page limit stands in for a full disk: rows wait in memory, then land; none is lost."""
    db = tmp_path / "full.sqlite"
    log = DecisionLog(db).start()
    log.flush()
    pages = log.call(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0]).result(5)
    log.call(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}")).result(5)  # "the disk is full"
    for i in range(300):
        log.record(_row(i))
    log.flush()
    assert len(rows(db)) == 0  # refused, kept
    log.call(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823")).result(5)  # space again
    deadline = time.monotonic() + 10
    while len(rows(db)) < 300 and time.monotonic() < deadline:
        time.sleep(0.1)
    log.close()
    assert len(rows(db)) == 300 and log.dropped == 0
    assert [r["id"] for r in rows(db)][:3] == ["r0", "r1", "r2"]


def test_server_keeps_serving_while_the_log_is_full(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    app = create_app(engine)
    with TestClient(app) as client:
        store = app.state.decision_log
        store.call(lambda conn: conn.execute("PRAGMA max_page_count = 1")).result(5)
        for _ in range(5):
            assert client.post("/v1/chat/completions", json=body(HELD_OUT["chat"])).status_code == 200
        store.flush()
        store.call(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823")).result(5)
        deadline = time.monotonic() + 10
        while len(rows(store.path)) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rows(store.path)) == 5
