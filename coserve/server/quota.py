"""Per-key limits: a request rate (token bucket) and a daily token budget, per API key.

The Gate asks ``check`` before a request of a limited key goes on: past the key's
``requests_per_minute`` it is refused with 429 ``rate_limited``, and once the key has used its
``tokens_per_day`` (prompt + completion tokens, counted by ``spend`` after each chat request) every
chat request is refused with 429 ``token_budget_exceeded`` until the next UTC day. Keys without
limits, and a server without keys, are never counted.

``KeyQuota`` is what the Gate and the request's settlement use: ``take`` (awaited, before the
request goes on) and ``spend`` (never waits). ``Quota`` is the in-process one, whose counters live
in this process; on a Ray cluster every ingress replica uses one shared counter instead
(coserve.distributed.shared_quota, which keeps a ``Quota`` in its one replica).

``counters`` and ``carry_on`` hand the counters to another process (a restarted shared counter,
coserve.distributed.quota_state) as plain numbers with wall-clock times: a bucket's level is carried
with the time it was read and refills for the time that passed since.

This module knows nothing about HTTP, the Authorization header or how tokens are counted: it only
keeps per-key counters.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from coserve.config import ApiKey
from coserve.errors import TooManyRequests

__all__ = ["KeyQuota", "Quota"]

DAY_S = 86400  # seconds in a UTC day (unix time has no leap seconds)


@dataclass
class _Bucket:
    """A key's request-rate bucket."""

    capacity: float  # requests (the burst a full bucket allows)
    rate: float  # requests refilled per second
    level: float  # requests available now
    stamp: float  # monotonic seconds of the last refill


@dataclass
class _Budget:
    """A key's token budget for one UTC day."""

    limit: int  # tokens per day
    day: int = -1  # unix day of ``used``
    used: int = 0  # tokens spent that day


class KeyQuota(Protocol):
    """Per-key limits as a server uses them (in-process, or shared by a cluster's ingresses)."""

    async def take(self, key: str, *, chat: bool) -> None:
        """Take one request of ``key``; TooManyRequests past its limits (or 503 if they cannot be read)."""
        ...

    def spend(self, key: str, tokens: int) -> None:
        """Count ``tokens`` against ``key``'s budget for today, without waiting."""
        ...

    async def aclose(self) -> None:
        """Count what was spent and not counted yet (at shutdown)."""
        ...


class Quota:
    """Per-key request buckets and daily token budgets, in this process (a ``KeyQuota``)."""

    def __init__(
        self,
        keys: Iterable[ApiKey] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self._clock = clock  # monotonic seconds: refills
        self._wall = wall  # unix seconds: the UTC day
        self._buckets: dict[str, _Bucket] = {}
        self._budgets: dict[str, _Budget] = {}
        self._lock = threading.Lock()
        for key in keys:
            if key.requests_per_minute is not None:
                rpm = float(key.requests_per_minute)
                self._buckets[key.sha256] = _Bucket(rpm, rpm / 60.0, rpm, clock())
            if key.tokens_per_day is not None:
                self._budgets[key.sha256] = _Budget(key.tokens_per_day)

    async def take(self, key: str, *, chat: bool) -> None:
        """``check``, as the Gate awaits it."""
        self.check(key, chat=chat)

    async def aclose(self) -> None:
        """Nothing to do: ``spend`` counts at once."""

    def check(self, key: str, *, chat: bool) -> None:
        """Take one request from ``key``'s bucket; TooManyRequests past its rate or (chat) its budget."""
        with self._lock:
            budget = self._budgets.get(key)
            if chat and budget is not None:
                now = self._wall()
                if budget.day == int(now // DAY_S) and budget.used >= budget.limit:
                    raise TooManyRequests(
                        f"this key has used its {budget.limit} tokens for today (UTC); retry tomorrow",
                        retry_after=max(1, math.ceil(DAY_S - now % DAY_S)),
                        code="token_budget_exceeded",
                    )
            bucket = self._buckets.get(key)
            if bucket is None:
                return
            now = self._clock()
            bucket.level = min(bucket.capacity, bucket.level + (now - bucket.stamp) * bucket.rate)
            bucket.stamp = now
            if bucket.level < 1.0:
                raise TooManyRequests(
                    f"this key may send {bucket.capacity:g} requests a minute; retry later",
                    retry_after=max(1, math.ceil((1.0 - bucket.level) / bucket.rate)),
                    code="rate_limited",
                )
            bucket.level -= 1.0

    def spend(self, key: str, tokens: int) -> None:
        """Count ``tokens`` (prompt + completion) against ``key``'s budget for today."""
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                return
            day = int(self._wall() // DAY_S)
            if budget.day != day:
                budget.day, budget.used = day, 0
            budget.used += tokens

    def used(self, key: str) -> int:
        """Tokens ``key`` has spent today (0 for a key without a budget)."""
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None or budget.day != int(self._wall() // DAY_S):
                return 0
            return budget.used

    def counters(self) -> dict[str, dict[str, float]]:
        """Each limited key's counters now, as plain numbers: ``requests_left`` (its bucket, refilled to
        now) with ``at`` (unix seconds now), and ``day`` (unix day) with ``tokens_used`` that day."""
        with self._lock:
            clock, wall = self._clock(), self._wall()
            out: dict[str, dict[str, float]] = {}
            for key, bucket in self._buckets.items():
                level = min(bucket.capacity, bucket.level + (clock - bucket.stamp) * bucket.rate)
                out[key] = {"requests_left": level, "at": wall}
            for key, budget in self._budgets.items():
                out.setdefault(key, {}).update(day=budget.day, tokens_used=budget.used)
            return out

    def carry_on(self, saved: Mapping[str, Mapping[str, Any]]) -> int:
        """Take counters that ``counters`` gave in another process: each bucket refilled for the time
        since it was read (capped at this key's limit), each day's tokens kept. Keys this process does
        not limit are left out; returns how many keys were taken. ValueError when ``saved`` is malformed
        (nothing is changed then)."""
        buckets: dict[str, float] = {}
        budgets: dict[str, tuple[int, int]] = {}
        try:
            for key, numbers in saved.items():
                if key in self._buckets and "requests_left" in numbers:
                    level, at = float(numbers["requests_left"]), float(numbers["at"])
                    if not (math.isfinite(level) and math.isfinite(at)):
                        raise ValueError(f"not a number: {numbers!r}")
                    bucket = self._buckets[key]
                    since = max(0.0, self._wall() - at)  # a clock set back refills nothing
                    buckets[key] = min(bucket.capacity, max(0.0, level) + since * bucket.rate)
                if key in self._budgets and "tokens_used" in numbers:
                    budgets[key] = (int(numbers["day"]), max(0, int(numbers["tokens_used"])))
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"malformed counters: {exc!r}") from None
        with self._lock:
            for key, level in buckets.items():
                self._buckets[key].level, self._buckets[key].stamp = level, self._clock()
            for key, (day, used) in budgets.items():
                self._budgets[key].day, self._budgets[key].used = day, used
        return len(set(buckets) | set(budgets))
