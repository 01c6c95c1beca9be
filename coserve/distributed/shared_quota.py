"""API-key quotas held once for a whole Ray cluster: one counter that every ingress replica spends.

``QuotaService`` is the ``quota`` deployment (one replica): it keeps the single process's own
counters (coserve.server.quota.Quota: a token bucket per key for ``requests_per_minute``, a UTC-day
budget for ``tokens_per_day``) for the library's keys, so N ingress replicas do not give a key N
times its limits. ``SharedQuota`` is the ingress's ``KeyQuota`` over that deployment's handle:

* ``take`` costs one call to the deployment, and only for a key with a limit that applies (a
  key without limits, or a non-chat request of a key with only a token budget, costs nothing);
* ``spend`` never waits: tokens are added up per key and sent in one call, in the background; a
  call that fails is tried again a second later with what has piled up since;
* when the deployment does not answer within ``CALL_TIMEOUT_S`` (its replica is restarting, its
  node died), a limited key's request is refused with 503 ``quota_unavailable`` and
  ``Retry-After`` (fail closed: a limited key never gets an unlimited free pass); keys without
  limits are served as before.

On Ray the counters are kept in Ray's GCS key-value store (coserve.distributed.quota_state: written
at most every half second and at stop, key ``quota-state/<application>``), and a restarted ``quota``
replica carries them on: a key's limits are not reset by a node loss (it may overspend by what it
took in the last half second before a crash).
Imports Ray only through the handles it is given; this module knows nothing about HTTP or routing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from coserve.config import ApiKey, load_library
from coserve.distributed.quota_state import QuotaKeeper, Store
from coserve.distributed.ray_host import error_record, raise_record
from coserve.errors import ServiceUnavailable, TooManyRequests
from coserve.server.quota import Quota

__all__ = ["CALL_TIMEOUT_S", "QUOTA_STATE", "QuotaService", "SharedQuota"]

log = logging.getLogger("coserve.distributed")

CALL_TIMEOUT_S = 2.0  # the longest a request waits for the shared counter before it is refused (503)
RETRY_AFTER_S = 5  # what a client refused because the counter did not answer is told to wait
SPEND_RETRY_S = 1.0  # how soon tokens the counter did not take are sent again
QUOTA_STATE = "quota-state"  # the GCS key (per application) of the saved counters


class QuotaService:
    """The ``quota`` deployment: the cluster's one set of per-key counters."""

    def __init__(self, library_path: str | None, saved_as: str | None = None, store: Store | None = None):
        """``saved_as``: keep the counters under this GCS key kind (inside a Ray Serve replica);
        ``store``: keep them there instead; neither: in this process only."""
        self.quota = Quota(load_library(library_path).server.api_keys)
        if store is None and saved_as is not None:
            from coserve.distributed.ray_placement import GcsStore, state_key

            store = GcsStore(state_key(saved_as))
        self.keeper = QuotaKeeper(self.quota, store) if store is not None else None
        if self.keeper is not None:
            log.info("quota: %s", self.keeper.resume())

    async def take(self, key: str, chat: bool) -> dict[str, Any] | None:
        """One request of ``key``: None when it may go on, else the refusal as an error record."""
        try:
            self.quota.check(key, chat=chat)
        except TooManyRequests as exc:
            return error_record(exc)
        if self.keeper is not None:
            self.keeper.changed()
        return None

    async def spend(self, tokens: Mapping[str, int]) -> None:
        """Tokens per key, spent by one ingress since its last call."""
        for key, count in tokens.items():
            self.quota.spend(key, int(count))
        if self.keeper is not None and tokens:
            self.keeper.changed()

    async def used(self, key: str) -> int:
        """Tokens ``key`` has spent today over the whole cluster."""
        return self.quota.used(key)

    def __del__(self) -> None:
        """Ray Serve calls this when it stops the replica: the last changes are written."""
        keeper = getattr(self, "keeper", None)  # None too when __init__ failed before setting it
        if keeper is not None:
            keeper.close()


class SharedQuota:
    """An ingress replica's ``KeyQuota`` over the ``quota`` deployment (see the module doc)."""

    def __init__(self, handle: Any, keys: Iterable[ApiKey], *, timeout_s: float = CALL_TIMEOUT_S):
        self.handle = handle  # DeploymentHandle of QuotaService
        keys = tuple(keys)
        self.rated = frozenset(k.sha256 for k in keys if k.requests_per_minute is not None)
        self.budgeted = frozenset(k.sha256 for k in keys if k.tokens_per_day is not None)
        self.timeout_s = timeout_s
        self.unsent: Counter[str] = Counter()  # tokens per key not yet taken by the counter
        self.unreachable = 0  # requests refused because the counter did not answer
        self._sender: asyncio.Task[None] | None = None

    async def take(self, key: str, *, chat: bool) -> None:
        if key not in self.rated and not (chat and key in self.budgeted):
            return  # no limit of this key applies to this request
        try:
            refusal = await asyncio.wait_for(self.handle.take.remote(key, chat), self.timeout_s)
        except Exception as exc:  # the replica is restarting or its node is gone
            self.unreachable += 1
            log.warning("quota service did not answer (%s): a limited key's request is refused", exc)
            raise ServiceUnavailable(
                "this key's limits cannot be checked right now; retry later",
                retry_after=RETRY_AFTER_S,
                code="quota_unavailable",
            ) from None
        if refusal is not None:
            raise_record(refusal)

    def spend(self, key: str, tokens: int) -> None:
        if key not in self.budgeted or tokens <= 0:
            return
        self.unsent[key] += tokens
        if self._sender is None or self._sender.done():
            try:
                self._sender = asyncio.get_running_loop().create_task(self._send())
            except RuntimeError:  # no event loop here: the next spend on the loop sends these too
                return

    async def _send(self) -> None:
        while self.unsent:
            tokens, self.unsent = self.unsent, Counter()
            try:
                await asyncio.wait_for(self.handle.spend.remote(dict(tokens)), self.timeout_s)
            except Exception as exc:
                log.warning("quota service did not take %d tokens (%s); retrying", sum(tokens.values()), exc)
                self.unsent.update(tokens)
                await asyncio.sleep(SPEND_RETRY_S)

    async def flush(self) -> None:
        """Send the tokens spent so far (waits while the counter does not answer)."""
        if self._sender is not None:
            await self._sender
        if self.unsent:
            await self._send()

    async def aclose(self) -> None:
        """At shutdown: send the tokens spent so far, giving up after ``timeout_s`` (they are lost)."""
        try:
            await asyncio.wait_for(self.flush(), self.timeout_s)
        except Exception:  # the counter is gone too
            log.warning("quota service did not take %d tokens at shutdown", sum(self.unsent.values()))
