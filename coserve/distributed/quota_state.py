"""The shared API-key counters kept where a restarted ``quota`` replica finds them.

``QuotaKeeper`` writes a ``Quota``'s counters (coserve.server.quota: per limited key, the requests
left in its bucket with the time they were read, and the UTC day with the tokens used that day) to a
``StateStore`` (on Ray, Ray's GCS key-value store, which outlives every worker node) and reads them
back when the replica starts:

* writes are coalesced: a change (a request taken, tokens spent) marks the counters changed, and
  they are written at most once every ``SAVE_EVERY_S``, plus once at stop (``close``); a write
  that fails only warns and is tried again a period later;
* ``resume`` carries the saved counters on (buckets refilled for the time since they were read);
  saved state that cannot be read starts every counter from zero, with a warning, never a failed
  start.

Worst case: a replica that dies without stopping loses the changes since its last write, at most
``SAVE_EVERY_S`` of them (plus a write in flight): a key may overspend by what it took in that time.

The bytes are JSON: ``{"format": 1, "saved_at": unix seconds, "keys": {sha256: counters}}``.
This module knows nothing about Ray or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import Protocol

from coserve.server.quota import Quota

__all__ = ["FORMAT", "SAVE_EVERY_S", "QuotaKeeper", "decode", "encode"]

log = logging.getLogger("coserve.distributed")

FORMAT = 1  # bump when the layout changes: older state is then not resumed
SAVE_EVERY_S = 0.5  # the longest a change waits before it is written (the most a crash loses)


class Store(Protocol):
    """Where the bytes are kept (coserve.distributed.ray_placement.GcsStore on Ray)."""

    def get(self) -> bytes | None: ...
    def put(self, value: bytes) -> None: ...


def encode(quota: Quota) -> bytes:
    """The quota's counters as this module's bytes."""
    return json.dumps({"format": FORMAT, "saved_at": time.time(), "keys": quota.counters()}, sort_keys=True).encode()


def decode(raw: bytes, quota: Quota) -> int:
    """Carry saved bytes on into ``quota``; the keys taken. ValueError when unreadable (``quota`` unchanged)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not format {FORMAT} quota counters")
    keys = data.get("keys")
    if not isinstance(keys, dict) or not all(isinstance(c, dict) for c in keys.values()):
        raise ValueError("no counters per key")
    return quota.carry_on(keys)


class QuotaKeeper:
    """Keeps one ``Quota``'s counters in a ``Store`` (see the module doc)."""

    def __init__(self, quota: Quota, store: Store, every_s: float = SAVE_EVERY_S):
        self.quota, self.store, self.every_s = quota, store, every_s
        self.changed_since_save = False
        self.saves = 0  # writes that succeeded
        self._writer: asyncio.Task[None] | None = None
        self._taken = 0  # snapshots taken so far (each write's number)
        self._written = 0  # the number of the last snapshot written
        self._put_lock = threading.Lock()

    def resume(self) -> str:
        """Carry the saved counters on; says what was done. Never raises."""
        try:
            raw = self.store.get()
            if raw is None:
                return "no saved counters: every key starts from zero"
            taken = decode(raw, self.quota)
        except Exception as exc:  # unreadable, or a store that does not answer
            log.warning("quota counters not resumed (%s): every key starts from zero", exc)
            return f"saved counters unreadable: every key starts from zero ({exc})"
        return f"resumed the counters of {taken} keys"

    def changed(self) -> None:
        """A counter changed: it is written within ``every_s`` (call inside the event loop)."""
        self.changed_since_save = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        while self.changed_since_save:
            await asyncio.sleep(self.every_s)
            await self.save()

    async def save(self) -> bool:
        """Write the counters now; False (with a warning) when the store did not take them."""
        self.changed_since_save = False
        try:
            await asyncio.to_thread(self._put, *self._snapshot())
        except Exception as exc:
            self.changed_since_save = True  # the writer tries again a period later
            log.warning("quota counters not saved (%s); retrying", exc)
            return False
        return True

    def _snapshot(self) -> tuple[bytes, int]:
        self._taken += 1
        return encode(self.quota), self._taken

    def _put(self, raw: bytes, number: int) -> None:
        """Write one snapshot; one write at a time, and never an older snapshot after a newer one."""
        with self._put_lock:
            if number <= self._written:
                return
            self.store.put(raw)
            self._written = number
            self.saves += 1

    def close(self) -> None:
        """At stop: write what changed since the last write, here and now (a failure only warns)."""
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            with contextlib.suppress(RuntimeError):  # its event loop is closed already
                writer.cancel()
        if self.changed_since_save:
            self.changed_since_save = False
            try:
                self._put(*self._snapshot())  # waits for a write in flight, then writes the newer state
            except Exception as exc:
                log.warning("quota counters not saved at stop: %s", exc)
