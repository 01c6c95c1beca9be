"""The decision log: one SQLite row per chat request (who answered, why, how it went), and feedback.

Writes never wait on the disk: ``record`` puts a row on a bounded in-memory queue, and one
background thread writes the queue in batches (every ``FLUSH_INTERVAL_S`` or ``BATCH_ROWS`` rows,
one transaction each, ``executemany``). The database is in WAL mode, so a process killed at any
moment leaves a consistent file that holds every committed batch: at most one batch (0.2 s or 256
rows) is lost. A full queue drops rows (counted in ``dropped``) rather than slow requests down.
Feedback and explicit flushes run on the same thread, after every row queued before them.
With ``retention`` (``server.log.retention``) the same thread also deletes what the limits say must
go, one bounded batch between two writes (coserve.store.retention): at start, then every
``retention.interval_s``, and batch after batch while a backlog lasts.

``DecisionStore`` is what the server needs of a log: ``DecisionLog`` writes this process's file; on a
Ray cluster every ingress replica sends its rows to one log instead
(coserve.distributed.shared_log, whose one replica runs a ``DecisionLog``).

This module knows nothing about HTTP, engines or experts; it stores what it is given.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from coserve.store.online_state import read_state, write_state
from coserve.store.predicted import Scored, read_prediction
from coserve.store.retention import PruneStats, Retention, count_rows, prune_batch

__all__ = ["DecisionLog", "DecisionRow", "DecisionStore", "query_decisions"]

log = logging.getLogger("coserve.store")

FLUSH_INTERVAL_S = 0.2  # longest a queued row waits before its batch is written
BATCH_ROWS = 256  # most rows in one transaction
MAX_QUEUE_ROWS = 65536  # rows waiting in memory before new ones are dropped
BACKLOG_PAUSE_S = 0.01  # between two prune batches while a backlog lasts (writes go between them)
RETRY_INTERVAL_S = 1.0  # how often rows the database refused (disk full) are tried again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,          -- unix seconds
    model TEXT NOT NULL,         -- the model the client asked for
    expert TEXT NOT NULL,        -- the expert that answered (or was chosen, if none did)
    category TEXT,
    confidence REAL,
    reason TEXT,
    fallback_from TEXT,          -- comma-separated experts tried first
    status TEXT NOT NULL,        -- "200", "499", "stream_error" or the error's HTTP status
    latency_s REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    map_version INTEGER,         -- the online router's map version (router.online), else NULL
    cascade TEXT,                -- routing.mode cascade: JSON list of the steps (expert, probability, outcome)
    predicted TEXT,              -- router.online per prompt: JSON {expert: predicted score} it routed with
    prompt TEXT,                 -- only with server.log.store_text
    completion TEXT
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL REFERENCES decisions (id),
    time REAL NOT NULL,
    score REAL NOT NULL          -- -1 (bad) .. 1 (good)
);
CREATE INDEX IF NOT EXISTS feedback_id ON feedback (id);
"""


@dataclass(frozen=True)
class DecisionRow:
    """One chat request, as the log keeps it."""

    id: str
    time: float  # unix seconds when the request arrived
    model: str
    expert: str
    category: str | None
    confidence: float | None
    reason: str | None
    fallback_from: str | None  # comma-separated
    status: str
    latency_s: float | None  # seconds from arrival to the last byte
    prompt_tokens: int | None
    completion_tokens: int | None
    map_version: int | None = None  # the online router's map version, when it routed
    cascade: str | None = None  # JSON list of a cascade's steps (routing.mode: cascade), else None
    predicted: str | None = None  # JSON {expert: per-prompt predicted score} the online router routed with
    prompt: str | None = None  # None unless texts are stored
    completion: str | None = None


_COLUMNS = tuple(f.name for f in fields(DecisionRow))
_INSERT = f"INSERT OR REPLACE INTO decisions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_STOP = object()


@dataclass(frozen=True)
class _Call:
    """Work for the writer thread, run after every row queued before it."""

    fn: Callable[[sqlite3.Connection], Any]
    result: concurrent.futures.Future[Any]


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) a decision log database in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no commit
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
    for column, kind in (("map_version", "INTEGER"), ("cascade", "TEXT"), ("predicted", "TEXT")):  # an older log
        if column not in columns:
            conn.execute(f"ALTER TABLE decisions ADD COLUMN {column} {kind}")
    return conn


class DecisionStore(Protocol):
    """The decision log as the server uses it (this process's file, or a cluster's one log)."""

    path: Path  # the SQLite file (on a cluster: on the log's node)
    store_text: bool  # whether rows keep the prompt and completion texts
    dropped: int  # rows refused because a queue was full

    def start(self) -> DecisionStore: ...
    async def prune_stats(self) -> PruneStats | None: ...  # None without retention (or not counted yet)
    def record(self, row: DecisionRow) -> bool: ...  # never waits; False when the row was dropped
    def feedback(self, request_id: str, score: float) -> concurrent.futures.Future[bool]: ...
    def feedback_once(self, request_id: str, score: float) -> concurrent.futures.Future[Scored]: ...
    def save_online_state(self, state: dict[str, Any]) -> None: ...  # after the rows queued before it
    def online_state(self) -> dict[str, Any] | None: ...  # the saved online router state, if any
    def close(self, timeout: float = 10.0) -> None: ...  # writes what is queued


class DecisionLog:
    """The writer: ``record`` rows, ``feedback`` on them, ``flush``, ``close`` (a ``DecisionStore``)."""

    def __init__(
        self,
        path: Path,
        *,
        store_text: bool = False,
        max_queue_rows: int = MAX_QUEUE_ROWS,
        retention: Retention | None = None,
    ):
        self.path = Path(path)
        self.store_text = store_text
        self.retention = retention
        self.dropped = 0  # rows refused because the queue was full (or kept too long unwritten)
        self.pruned = 0  # rows retention deleted since start
        self.kept: int | None = None  # rows in the file (counted by the writer with retention, else None)
        self._others_version = -1  # SQLite's data_version when the writer last counted the rows
        self._max_queue_rows = max_queue_rows
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue_rows)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> DecisionLog:
        """Open the database (errors surface here) and start the writer thread."""
        with self._lock:
            if self._thread is None:
                conn = connect(self.path)
                conn.close()
                self._thread = threading.Thread(target=self._run, name="coserve-decision-log", daemon=True)
                self._thread.start()
        return self

    def record(self, row: DecisionRow) -> bool:
        """Queue one row without waiting; False if it was dropped (queue full)."""
        if not self.store_text and (row.prompt is not None or row.completion is not None):
            row = DecisionRow(*astuple(row)[:-2])
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("decision log: queue full, %d rows dropped so far", self.dropped)
            return False
        return True

    def call(self, fn: Callable[[sqlite3.Connection], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(connection)`` on the writer thread once the rows queued so far are written."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Call(fn, result))
        return result

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row queued so far is written."""
        self.call(lambda _: None).result(timeout)

    def feedback(self, request_id: str, score: float) -> concurrent.futures.Future[bool]:
        """Store a score for a logged request; the future says whether the request was known."""

        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM decisions WHERE id = ?", (request_id,)).fetchone() is None:
                return False
            with conn:
                conn.execute(
                    "INSERT INTO feedback (id, time, score) VALUES (?, ?, ?)", (request_id, time.time(), score)
                )
            return True

        return self.call(write)

    def feedback_once(self, request_id: str, score: float) -> concurrent.futures.Future[Scored]:
        """Store the first score of a logged request: ``Scored("stored", category, expert, predicted)``
        (``predicted``: the expert's logged per-prompt prediction, or None; the category None where no
        expert answered, status not 200: nothing to learn), else ``("unknown", None, "")`` or
        ``("duplicate", None, "")`` and nothing is written (checked and written on the writer thread,
        so two scores of one request cannot both be stored)."""

        def write(conn: sqlite3.Connection) -> Scored:
            query = "SELECT category, expert, predicted, status FROM decisions WHERE id = ?"
            row = conn.execute(query, (request_id,)).fetchone()
            if row is None:
                return Scored("unknown", None, "")
            if conn.execute("SELECT 1 FROM feedback WHERE id = ?", (request_id,)).fetchone() is not None:
                return Scored("duplicate", None, "")
            with conn:
                conn.execute(
                    "INSERT INTO feedback (id, time, score) VALUES (?, ?, ?)", (request_id, time.time(), score)
                )
            predicted = read_prediction(row[2])
            category = row[0] if str(row[3]) == "200" else None  # an error's score is no expert's answer's
            return Scored("stored", category, row[1], None if predicted is None else predicted.get(row[1]))

        return self.call(write)

    async def prune_stats(self) -> PruneStats | None:
        """Rows retention deleted since start and rows in the file (None without retention)."""
        if self.retention is None or self.kept is None:
            return None
        return PruneStats(self.pruned, self.kept)

    def save_online_state(self, state: dict[str, Any]) -> None:
        """Replace the online router's saved state in this file, after the rows queued so far."""
        self.call(lambda conn: write_state(conn, state))

    def online_state(self) -> dict[str, Any] | None:
        """The online router's saved state in this file (None, with a warning, where there is none)."""
        return read_state(self.path)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)

    def _run(self) -> None:
        conn = connect(self.path)
        unwritten: list[DecisionRow] = []  # rows a failed write (disk full, locked) keeps for the next batch
        if self.retention is not None:
            self.kept = count_rows(conn)
            (self._others_version,) = conn.execute("PRAGMA data_version").fetchone()
        next_prune = time.monotonic()  # with retention: at start, then as _prune says
        try:
            while True:
                try:
                    first = self._queue.get(timeout=self._wait_s(unwritten, next_prune))
                except queue.Empty:
                    first = None
                rows: list[DecisionRow] = unwritten
                item: object = first
                deadline = time.monotonic() + FLUSH_INTERVAL_S
                # Gather a batch: rows until BATCH_ROWS, the deadline, or a call/stop that must follow them.
                while isinstance(item, DecisionRow):
                    rows.append(item)
                    if len(rows) >= BATCH_ROWS:
                        item = None
                        break
                    try:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        item = None
                if self._write(conn, rows):
                    unwritten = []
                    if self.kept is not None:
                        self.kept += len(rows)
                else:
                    unwritten = self._keep(rows)
                if self.retention is not None and time.monotonic() >= next_prune:
                    next_prune = self._prune(conn, self.retention)
                if isinstance(item, _Call):
                    self._run_call(conn, item)
                elif item is _STOP:
                    return
        finally:
            conn.close()

    def _wait_s(self, unwritten: list[DecisionRow], next_prune: float) -> float | None:
        """How long the writer may wait for the next row: until a retry or a prune is due."""
        waits = [RETRY_INTERVAL_S] if unwritten else []
        if self.retention is not None:
            waits.append(max(0.0, next_prune - time.monotonic()))
        return min(waits) if waits else None

    def _prune(self, conn: sqlite3.Connection, retention: Retention) -> float:
        """One batch of retention; when the next is due (soon while a backlog lasts)."""
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()  # changes when another connection commits
            if version != self._others_version:  # coserve log prune, or another writer: count the file again
                self.kept, self._others_version = count_rows(conn), version
            deleted = prune_batch(conn, retention, self.kept or 0)
        except sqlite3.Error as exc:
            log.warning("decision log: retention could not delete rows (%s); trying again later", exc)
            return time.monotonic() + retention.interval_s
        self.pruned += deleted
        self.kept = (self.kept or 0) - deleted
        return time.monotonic() + (BACKLOG_PAUSE_S if deleted >= retention.batch_rows else retention.interval_s)

    @staticmethod
    def _write(conn: sqlite3.Connection, rows: list[DecisionRow]) -> bool:
        """Write one batch in one transaction; False (nothing written) if the database refused it."""
        if not rows:
            return True
        try:
            with conn:
                conn.executemany(_INSERT, [astuple(row) for row in rows])
        except sqlite3.Error as exc:
            log.warning("decision log: %d rows not written yet (%s); retrying", len(rows), exc)
            return False
        return True

    def _keep(self, rows: list[DecisionRow]) -> list[DecisionRow]:
        """Rows to retry, bounded like the queue: the oldest beyond the bound are dropped (counted)."""
        excess = len(rows) - self._max_queue_rows
        if excess > 0:
            self.dropped += excess
            log.warning("decision log: %d unwritten rows dropped (database still refusing)", excess)
            rows = rows[excess:]
        return rows

    @staticmethod
    def _run_call(conn: sqlite3.Connection, call: _Call) -> None:
        try:
            call.result.set_result(call.fn(conn))
        except Exception as exc:  # handed to the caller, who decides
            call.result.set_exception(exc)


def query_decisions(
    path: Path,
    *,
    since: datetime | None = None,
    expert: str | None = None,
    limit: int | None = None,
    newest: bool = False,
) -> list[dict[str, Any]]:
    """Logged decisions, oldest first, each with its latest feedback score (or None).

    ``limit`` keeps the oldest rows that match, or with ``newest`` the latest ones (still listed oldest first)."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("d.time >= ?")
        params.append(since.timestamp())
    if expert is not None:
        where.append("d.expert = ?")
        params.append(expert)
    conn = sqlite3.connect(path, timeout=30)
    try:
        present = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}  # an older log lacks map_version
        columns = [c for c in _COLUMNS if c in present]
        sql = (
            f"SELECT {', '.join('d.' + c for c in columns)}, "
            "(SELECT f.score FROM feedback f WHERE f.id = d.id ORDER BY f.seq DESC LIMIT 1) AS feedback "
            "FROM decisions d" + (" WHERE " + " AND ".join(where) if where else "")
        )
        sql += " ORDER BY d.time DESC, d.id DESC" if newest else " ORDER BY d.time, d.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute(sql, params)]
        return rows[::-1] if newest else rows
    finally:
        conn.close()
