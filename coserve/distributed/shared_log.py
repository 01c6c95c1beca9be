"""One decision log for a whole Ray cluster: the ingress replicas send their rows to one writer.

``DecisionLogService`` is the ``decision-log`` deployment (one replica, held on the ingress's or
the head node, so the operator knows which machine holds the file): it runs the single process's
own writer (coserve.store.log.DecisionLog: the library's ``server.log`` file, SQLite in WAL mode,
batched by its own thread) and answers feedback against it. ``SharedDecisionLog`` is an ingress
replica's ``DecisionStore`` over that deployment's handle:

* ``record`` never waits: the row goes on a bounded in-memory queue (``MAX_QUEUE_ROWS``); a full
  queue drops the row, counts it in ``dropped`` and logs a warning (the first, then every 1000th);
* one task sends the queue in batches (every ``FLUSH_INTERVAL_S`` or ``BATCH_ROWS`` rows, one call
  each); a batch the deployment does not take (restarting, node gone) stays queued, at the front,
  and is tried again a second later; the queue's bound holds, the oldest rows going first;
* feedback first sends this replica's queued rows, then asks the deployment, which looks the
  decision up in the one file: a decision served by any ingress replica is found. Rows of another
  replica may still be on their way (a batch interval or two), so the deployment looks again for up
  to ``FIND_ROW_S`` before it answers that the id is unknown (404).

The placement controller reads the live traffic from the one file (``expert_counts``: decisions per
expert written after a row cursor and made since a time; coserve.distributed.ray_placement).
With ``router.online`` the deployment also holds the cluster's one online router
(``OnlineOwner``, coserve.distributed.shared_online): it learns from the rows and the feedback it
takes, publishes the map to the ingress replicas (``online_exchange``) and alone saves its state in
the same file.
The deployment also keeps the cluster's recent dashboard events (``feed_exchange``, an
``EventRing``: coserve.distributed.shared_feed).
Imports Ray only through the handles it is given; this module knows nothing about HTTP or routing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from coserve.config import load_library
from coserve.distributed.shared_feed import Cursor, EventRing
from coserve.distributed.shared_online import Signal, owner_for
from coserve.errors import ServiceUnavailable
from coserve.server.app import open_decision_log
from coserve.store.log import BATCH_ROWS, FLUSH_INTERVAL_S, MAX_QUEUE_ROWS, DecisionRow
from coserve.store.predicted import Scored
from coserve.store.retention import PruneStats

__all__ = ["DecisionLogService", "SharedDecisionLog", "count_experts"]

log = logging.getLogger("coserve.distributed")

CALL_TIMEOUT_S = 10.0  # the longest one call to the log deployment may take
METRICS_TIMEOUT_S = 2.0  # the longest a /metrics scrape waits for the log's retention figures
RETRY_S = 1.0  # how soon a batch the deployment did not take is sent again
FIND_ROW_S = 2.0  # how long feedback waits for its decision's row to arrive from another replica
FIND_POLL_S = 0.1
_T = TypeVar("_T")


def count_experts(conn: sqlite3.Connection, after: int, since: float) -> tuple[int, dict[str, int]]:
    """Decisions per wanted expert among the rows written after row ``after`` (SQLite's rowid, which grows
    in the order rows reach the file, so a row that arrives late is still counted once) and made at
    or after ``since`` (unix seconds); with the last row's id, the cursor for the next call."""
    (last,) = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM decisions").fetchone()
    # Run on the log's one writer thread (DecisionLog.call): no row is added between the two queries.
    # The first question (no cursor yet) goes by the time index: the file may hold years of rows.
    where = "time >= ?" if after <= 0 else "rowid > ? AND time >= ?"
    values = (since,) if after <= 0 else (after, since)
    # The demand is the map's first choice: the first expert tried when the answer came from a fallback
    # (an expert the map sends traffic to but no node hosts yet must be seen, or it is never placed).
    first = (
        "CASE WHEN fallback_from IS NULL OR fallback_from = '' THEN expert"
        " ELSE substr(fallback_from, 1, instr(fallback_from || ',', ',') - 1) END"
    )
    query = f"SELECT {first} AS wanted, COUNT(*) FROM decisions WHERE {where} GROUP BY wanted"
    rows = conn.execute(query, values).fetchall()
    return int(last), {str(expert): int(n) for expert, n in rows}


class DecisionLogService:
    """The ``decision-log`` deployment: the cluster's one writer of the library's log file."""

    def __init__(self, library_path: str | None, find_row_s: float = FIND_ROW_S):
        library = load_library(library_path)
        self.log = open_decision_log(library).start()  # the single process's writer, retention included
        self.find_row_s = find_row_s
        self.events = EventRing()  # the cluster's recent dashboard events
        # router.online: the cluster's one learner (coserve.distributed.shared_online), None without
        self.online = owner_for(library, self.log.online_state() if library.router.online else None)

    async def online_exchange(
        self, seen: tuple[str, int] | None, predictions: dict[str, list[float]], signals: list[Signal]
    ) -> dict[str, Any] | None:
        """An ingress replica's scores and signals in; the online map's state out when it changed."""
        if self.online is None:
            return None
        return self.online.exchange(seen, predictions, signals)

    def _save_online(self, changed_by_score: bool) -> None:
        if self.online is not None and self.online.save_due(changed_by_score):
            self.log.save_online_state(self.online.live.export_state())  # this owner is the only writer

    async def feed_exchange(
        self, events: list[dict[str, Any]], cursor: Cursor | None
    ) -> tuple[Cursor, list[dict[str, Any]]]:
        """An ingress's new dashboard events in; the events after its ``cursor`` out."""
        return self.events.exchange(events, cursor)

    async def info(self) -> dict[str, Any]:
        """Where the file is, rows dropped here, and the online router's saved state (or None)."""
        return {"path": str(self.log.path), "dropped": self.log.dropped, "online_state": self.log.online_state()}

    async def prune_stats(self) -> PruneStats | None:
        """What the log's retention did (None without retention): for every ingress's ``/metrics``."""
        return await self.log.prune_stats()

    async def expert_counts(self, after: int, since: float) -> tuple[int, dict[str, int]]:
        """``count_experts`` on the file, once the rows queued here are written."""
        result: tuple[int, dict[str, int]] = await asyncio.wrap_future(
            self.log.call(lambda conn: count_experts(conn, after, since))
        )
        return result

    async def write(self, rows: list[DecisionRow]) -> int:
        """Queue one ingress batch on the writer; how many rows it took (the rest were dropped)."""
        taken = sum(self.log.record(row) for row in rows)
        if self.online is not None:
            self.online.rows(rows)  # the served costs of the whole cluster move the one budget weight
            self._save_online(False)
        return taken

    async def feedback(self, request_id: str, score: float, once: bool) -> Scored:
        """``DecisionLog.feedback_once`` (``once``) or ``feedback``, waiting ``find_row_s`` for a row
        still on its way from another ingress: ``Scored("stored" | "unknown" | "duplicate", category,
        expert, predicted)``."""
        deadline = time.monotonic() + self.find_row_s
        while True:
            if once:
                outcome = await asyncio.wrap_future(self.log.feedback_once(request_id, score))
            else:
                stored = await asyncio.wrap_future(self.log.feedback(request_id, score))
                outcome = Scored("stored" if stored else "unknown", None, "")
            if outcome.outcome != "unknown" or time.monotonic() >= deadline:
                if self.online is not None and outcome.outcome == "stored" and outcome.category is not None:
                    applied = self.online.feedback(
                        outcome.category, outcome.expert, score, request_id, outcome.predicted
                    )
                    self._save_online(applied)
                return outcome
            await asyncio.sleep(FIND_POLL_S)

    async def save_online_state(self, state: dict[str, Any]) -> None:
        """A state saved from outside (only where this deployment holds no learner of its own)."""
        if self.online is None:
            self.log.save_online_state(state)

    async def flush(self) -> int:
        """Write what is queued; the rows dropped here so far."""
        await asyncio.to_thread(self.log.flush)
        return self.log.dropped

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.online is not None:
                self.log.save_online_state(self.online.live.export_state())
            self.log.close()


class SharedDecisionLog:
    """An ingress replica's ``DecisionStore`` over the ``decision-log`` deployment (see the module doc)."""

    def __init__(
        self,
        handle: Any,
        *,
        store_text: bool,
        retention: bool = False,
        max_queue_rows: int = MAX_QUEUE_ROWS,
        batch_rows: int = BATCH_ROWS,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ):
        self.handle = handle  # DeploymentHandle of DecisionLogService
        self.store_text = store_text
        self.retention = retention  # the library sets server.log.retention: /metrics asks for its figures
        self.path = Path("")  # the file on the log's node, once ``open`` has asked
        self.dropped = 0  # rows this replica dropped (queue full)
        self.max_queue_rows = max_queue_rows
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.queue: deque[DecisionRow] = deque()
        self._saved_state: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._sender: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    async def open(self) -> SharedDecisionLog:
        """Ask the deployment where its file is and for the online router's saved state."""
        info = await asyncio.wait_for(self.handle.info.remote(), CALL_TIMEOUT_S)
        self.path = Path(info["path"])
        self._saved_state = info["online_state"]
        return self

    def start(self) -> SharedDecisionLog:
        """Start sending (from inside the serving event loop)."""
        if self._sender is None:
            self._loop = asyncio.get_running_loop()
            self._sender = self._loop.create_task(self._send_forever())
        return self

    def record(self, row: DecisionRow) -> bool:
        if len(self.queue) >= self.max_queue_rows:
            self._drop(1)
            return False
        self.queue.append(row)
        self._wake.set()
        return True

    def _drop(self, count: int) -> None:
        before, self.dropped = self.dropped, self.dropped + count
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning("cluster decision log: queue full, %d rows dropped so far", self.dropped)

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self.queue) < self.batch_rows:
                await asyncio.sleep(self.flush_interval_s)  # gather a batch
            if not await self.flush():
                await asyncio.sleep(RETRY_S)
                self._wake.set()

    async def flush(self) -> bool:
        """Send every queued row, a batch a call; False (rows kept) if the deployment did not take one."""
        async with self._send_lock:
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(self.batch_rows, len(self.queue)))]
                try:
                    await asyncio.wait_for(self.handle.write.remote(batch), CALL_TIMEOUT_S)
                except Exception as exc:  # restarting, or its node is gone: keep the rows, oldest first
                    log.warning("cluster decision log did not take %d rows (%s); retrying", len(batch), exc)
                    self.queue.extendleft(reversed(batch))
                    excess = len(self.queue) - self.max_queue_rows
                    if excess > 0:
                        for _ in range(excess):
                            self.queue.popleft()
                        self._drop(excess)
                    return False
            return True

    def _submit(self, work: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        assert self._loop is not None, "start the log first"
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def feedback(self, request_id: str, score: float) -> concurrent.futures.Future[bool]:
        return self._submit(self._stored(request_id, score))

    def feedback_once(self, request_id: str, score: float) -> concurrent.futures.Future[Scored]:
        return self._submit(self._feedback(request_id, score, once=True))

    async def _stored(self, request_id: str, score: float) -> bool:
        return (await self._feedback(request_id, score, once=False))[0] == "stored"

    async def _feedback(self, request_id: str, score: float, once: bool) -> Scored:
        await self.flush()  # this replica's own decision, if it served it, reaches the file first
        try:
            outcome = await asyncio.wait_for(
                self.handle.feedback.remote(request_id, score, once), CALL_TIMEOUT_S + FIND_ROW_S
            )
        except Exception as exc:
            log.warning("cluster decision log did not answer feedback: %s", exc)
            raise ServiceUnavailable(
                "the decision log does not answer right now; retry later", code="decision_log_unavailable"
            ) from None
        return Scored(*outcome)

    async def prune_stats(self) -> PruneStats | None:
        """The deployment's retention figures; None without retention, or (left out of ``/metrics``)
        while it does not answer within ``METRICS_TIMEOUT_S``."""
        if not self.retention:
            return None
        try:
            stats = await asyncio.wait_for(self.handle.prune_stats.remote(), METRICS_TIMEOUT_S)
        except Exception as exc:
            log.warning("cluster decision log did not answer for /metrics: %s", exc)
            return None
        return None if stats is None else PruneStats(*stats)

    def save_online_state(self, state: dict[str, Any]) -> None:
        future = asyncio.ensure_future(self._save(state), loop=self._loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def _save(self, state: dict[str, Any]) -> None:
        await self.flush()
        await asyncio.wait_for(self.handle.save_online_state.remote(state), CALL_TIMEOUT_S)

    def online_state(self) -> dict[str, Any] | None:
        return self._saved_state

    async def aclose(self) -> None:
        """Send what is queued and pending, and stop sending."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._pending, return_exceptions=True)
            await self.flush()
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None

    def close(self, timeout: float = 10.0) -> None:
        """``aclose`` from another thread (the server's lifespan closes logs in a worker thread)."""
        if self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(timeout)
