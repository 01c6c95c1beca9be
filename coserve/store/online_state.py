"""The online router's state in the decision log's SQLite file: one row, replaced whole on each save.

``write_state`` runs on a connection (the decision log's writer thread passes its own through
``DecisionLog.call``, so saves are serialised with the log's writes); ``read_state`` opens the file
read-only at start-up. A file without the table (or no file: a first start, no state ever saved) reads
as None, said at info level; a table without its row, a body that is not the JSON object it should be or
a file that cannot be read, as None with a warning: the caller falls back to the offline map and never
fails to start.
The body is a JSON object; this module checks only that, and knows nothing about what it holds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["read_state", "write_state"]

log = logging.getLogger("coserve.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_state (
    slot INTEGER PRIMARY KEY CHECK (slot = 1),  -- one row: the latest state
    time REAL NOT NULL,                          -- unix seconds of the save
    version INTEGER NOT NULL,                    -- the map version saved
    body TEXT NOT NULL                           -- the state, as a JSON object
);
"""


def write_state(conn: sqlite3.Connection, state: dict[str, Any]) -> None:
    """Replace the saved state with ``state`` (one transaction: a reader sees the old or the new)."""
    body = json.dumps(state, allow_nan=False)
    conn.executescript(_SCHEMA)
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO online_state (slot, time, version, body) VALUES (1, ?, ?, ?)",
            (time.time(), int(state.get("version", 0)), body),
        )


def read_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None (saying why: at info level on a first start) where there is none usable."""
    if not Path(path).exists():
        log.info("online state: none saved yet (%s does not exist: a first start); starting from the offline map", path)
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'online_state'")
            has_table = table.fetchone() is not None
            row = conn.execute("SELECT body FROM online_state WHERE slot = 1").fetchone() if has_table else None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("online state: cannot read %s (%s); starting from the offline map", path, exc)
        return None
    if not has_table:
        log.info("online state: none saved yet in %s (a first start); starting from the offline map", path)
        return None
    if row is None:  # the table is made by the first save: its row was never written, or was removed
        log.warning("online state: the state table in %s is empty; starting from the offline map", path)
        return None
    try:
        state = json.loads(row[0])
    except (TypeError, json.JSONDecodeError) as exc:
        log.warning("online state in %s is corrupt (%s); starting from the offline map", path, exc)
        return None
    if not isinstance(state, dict):
        log.warning("online state in %s is not an object; starting from the offline map", path)
        return None
    return state
