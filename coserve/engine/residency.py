"""What the expert pool records of each expert, and which idle experts leave a tier to make room.

``Entry`` is one expert's residency (tier, sizes, the staged object and handle, backoff);
``choose_victims`` is pure: furthest next use first, then least recently used, with the
candidates' numbers, the lookahead and the time as arguments. This module knows nothing about
asyncio, backends' runtimes or where the budgets come from (coserve.engine.pool uses it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coserve.backends.base import Handle
from coserve.errors import CoserveError, ExpertLoadError
from coserve.types import Tier

__all__ = ["BACKOFF_MAX_S", "BACKOFF_START_S", "Candidate", "Entry", "Lease", "choose_victims", "load_error"]

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass
class Entry:
    """What the pool knows of one expert."""

    nbytes: int = 0  # weights: what RAM holds and a move copies
    footprint: int = 0  # bytes when ACTIVE
    staged: Any = None  # what Backend.stage returned (RAM and ACTIVE tiers), or None on DISK
    handle: Handle | None = None
    moving: asyncio.Future[None] | None = None  # a move in progress (stage or load)
    in_flight: int = 0
    waiting: int = 0  # requests waiting for its move to end, to pin it then (it is no victim meanwhile)
    last_used: float = 0.0  # monotonic seconds
    active_since: float = 0.0
    backoff_until: float = 0.0
    backoff_s: float = 0.0
    last_error: str = ""
    pinned: bool = False  # kept ACTIVE: never a victim (a cluster plan's resident replica)

    @property
    def tier(self) -> Tier:
        return Tier.ACTIVE if self.handle else Tier.RAM if self.staged is not None else Tier.DISK

    def back_off(self, message: str) -> None:
        """Record a failed move: no new attempt for a while (doubling, capped)."""
        self.backoff_s = min(BACKOFF_MAX_S, self.backoff_s * 2 if self.backoff_s else BACKOFF_START_S)
        self.backoff_until = time.monotonic() + self.backoff_s
        self.last_error = message

    def state(self) -> dict[str, Any]:
        """The public view of this entry (/health)."""
        return {
            "tier": self.tier.value,
            "weights_bytes": self.nbytes or None,  # known once it was first measured (staged or loaded)
            "footprint_bytes": self.footprint or None,  # what ACTIVE counts for it
            "in_flight": self.in_flight,
            "loading": self.moving is not None,
            "backoff_s": max(0.0, round(self.backoff_until - time.monotonic(), 3)),
            "last_error": self.last_error or None,
            "pinned": self.pinned,
        }


@dataclass
class Lease:
    """A pinned ACTIVE expert; ``release()`` unpins it (idempotent)."""

    handle: Handle
    _release: Callable[[], None] = field(repr=False)
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


@dataclass(frozen=True)
class Candidate:
    """An idle expert in the tier that must make room."""

    freed: int  # bytes its move out of the tier frees
    last_used: float  # monotonic seconds
    active_since: float  # monotonic seconds it was made ACTIVE


def choose_victims(
    candidates: Mapping[str, Candidate],
    need: int,
    free: int,
    next_use: Mapping[str, float],
    now: float,
    min_residency_s: float,
    partial: bool = False,
) -> list[str] | None:
    """Experts to move out so ``need`` bytes fit beside ``free``; None if even all of them are not
    enough (``partial``: all of them, in order, instead). Experts made ACTIVE less than
    ``min_residency_s`` ago go last (anti-thrashing)."""

    def order(name: str) -> tuple[bool, float, float]:
        young = now - candidates[name].active_since < min_residency_s
        return (young, -next_use.get(name, math.inf), candidates[name].last_used)

    chosen: list[str] = []
    for name in sorted(candidates, key=order):
        if free >= need:
            break
        chosen.append(name)
        free += candidates[name].freed
    return chosen if free >= need or partial else None


def load_error(name: str, exc: BaseException) -> ExpertLoadError:
    """What a failed move raises: an ExpertLoadError (503: the server is fine, this expert is not),
    whatever the cause (a corrupt or missing file, a hash mismatch, the runtime's own failure)."""
    if isinstance(exc, ExpertLoadError):
        return exc
    return ExpertLoadError(exc.message if isinstance(exc, CoserveError) else f"expert {name!r}: {exc}")
