"""Retention of the decision log: which rows go, deleted a bounded batch at a time.

``Retention`` holds the limits (``server.log.retention``: rows older than ``max_age_s``, and the
oldest rows beyond ``max_rows``); ``prune_batch`` deletes at most ``batch_rows`` of the rows that
must go, with their feedback, in one short transaction, oldest first. A row younger than
``MIN_RETENTION_AGE_S`` (an hour) is never deleted, whatever ``max_rows`` says: a client's
feedback on a recent decision and the cluster's drift tally, which reads the new rows every tick,
always find it. The decision log's writer thread (coserve.store.log) calls ``prune_batch`` between
its writes, so a prune never holds a write up for longer than one batch; ``prune_all`` is the
one-off prune of ``coserve log prune``.

This module knows nothing about HTTP, the server or Ray; it deletes from the file it is given.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import NamedTuple

from coserve.config_log import MIN_RETENTION_AGE_S, RetentionSettings

__all__ = ["PRUNE_BATCH_ROWS", "PRUNE_INTERVAL_S", "PruneStats", "Retention", "count_rows", "prune_all", "prune_batch"]

PRUNE_BATCH_ROWS = 2000  # rows deleted in one transaction at most
PRUNE_INTERVAL_S = 60.0  # how often the writer looks for rows to prune once none are left


class PruneStats(NamedTuple):
    """What retention did since the writer started (``/metrics``)."""

    pruned: int  # rows deleted
    kept: int  # rows in the file now


@dataclass(frozen=True)
class Retention:
    """What the decision log keeps (None: no limit of that kind)."""

    max_age_s: float | None = None
    max_rows: int | None = None
    batch_rows: int = PRUNE_BATCH_ROWS
    interval_s: float = PRUNE_INTERVAL_S

    @classmethod
    def from_settings(cls, settings: RetentionSettings | None) -> Retention | None:
        """The library's ``server.log.retention`` (None where it is not set: every row is kept)."""
        if settings is None:
            return None
        return cls(max_age_s=settings.max_age, max_rows=settings.max_rows)


def count_rows(conn: sqlite3.Connection) -> int:
    """Rows in the log (one scan of the time index; the writer does it once, then keeps count)."""
    (rows,) = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()
    return int(rows)


def prune_batch(conn: sqlite3.Connection, retention: Retention, kept: int, now: float | None = None) -> int:
    """Delete, in one transaction, at most ``retention.batch_rows`` of the oldest rows that must go
    (older than ``max_age_s``, or beyond ``max_rows`` of ``kept`` rows) and their feedback; never a
    row younger than ``MIN_RETENTION_AGE_S``. Returns the rows deleted."""
    now = time.time() if now is None else now
    excess = max(0, kept - retention.max_rows) if retention.max_rows is not None else 0
    age_cut = now - retention.max_age_s if retention.max_age_s is not None else float("-inf")
    # Both limits take the oldest rows first, and age_cut <= the floor, so what goes is a prefix of
    # the rows older than the floor in time order: each row while it is too old or in the excess.
    oldest = conn.execute(
        "SELECT id, time FROM decisions WHERE time < ? ORDER BY time, rowid LIMIT ?",
        (now - MIN_RETENTION_AGE_S, retention.batch_rows),
    ).fetchall()
    doomed = []
    for index, (request_id, logged_at) in enumerate(oldest):
        if index >= excess and logged_at >= age_cut:
            break
        doomed.append((request_id,))
    if not doomed:
        return 0
    with conn:
        conn.executemany("DELETE FROM feedback WHERE id = ?", doomed)
        conn.executemany("DELETE FROM decisions WHERE id = ?", doomed)
    return len(doomed)


def prune_all(conn: sqlite3.Connection, retention: Retention, now: float | None = None) -> tuple[int, int]:
    """Prune batch after batch until nothing more must go: (rows deleted, rows kept)."""
    now = time.time() if now is None else now
    kept = count_rows(conn)
    deleted = 0
    while True:
        batch = prune_batch(conn, retention, kept, now)
        deleted, kept = deleted + batch, kept - batch
        if batch < retention.batch_rows:
            return deleted, kept
