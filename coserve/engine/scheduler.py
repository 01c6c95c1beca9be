"""The scheduler: per-expert queues, the next expert to run, and what to prefetch.

Because routing happens before execution, every queued request already names its expert. The
scheduler uses that to keep switches rare without starving anyone:

* stay on the running expert while it has queued work (no switch);
* otherwise go to a loaded expert with queued work, else to the expert whose oldest request has
  waited longest;
* but once any request has waited longer than ``max_wait_s`` (aging), its expert goes next,
  whatever is loaded — a rare expert is delayed, never starved;
* an expert's turn is the requests it had queued when it was switched to: aging preempts it only
  once those are taken. Without that, a backlog older than ``max_wait_s`` (any overload) makes every
  request "aged" and the order decays into arrival order, one switch per batch (what the ``lru``
  baseline does on purpose, ``arrival_order``);
* ``upcoming`` lists the other experts with queued work, the soonest first (prefetch hints), and
  ``next_use`` gives the lookahead eviction order.

It queues the request's own ``Call`` under ``call.expert`` (the expert being tried), ordered by
``call.queued_at``; it reads nothing else of it. It knows nothing about weights, runtimes or HTTP;
time comes in as an argument (testable).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from coserve.engine.call import Call

__all__ = ["Pick", "Scheduler"]


@dataclass(frozen=True)
class Pick:
    """The scheduler's choice: run ``expert``; ``upcoming`` experts are needed next, soonest first."""

    expert: str
    reason: str  # "stay" | "resident" | "oldest" | "aged"
    upcoming: tuple[str, ...] = ()


@dataclass
class Scheduler:
    """Per-expert FIFO queues with switch-minimising choice and a bound on waiting."""

    max_wait_s: float = 10.0  # a request older than this makes its expert the next one
    arrival_order: bool = False  # the baselines: always the expert of the oldest request
    queues: dict[str, deque[Call]] = field(default_factory=dict)
    turn: str | None = None  # the expert whose turn it is (the last one taken from)
    owed: int = 0  # requests of its turn (queued when the turn began) not yet taken

    def submit(self, call: Call) -> None:
        """Queue ``call`` for ``call.expert`` (set by the caller, with ``queued_at``)."""
        assert call.expert is not None
        self.queues.setdefault(call.expert, deque()).append(call)

    def withdraw(self, call: Call) -> bool:
        """Take ``call`` out of its queue (its caller went away); False when it was not queued."""
        queue = self.queues.get(call.expert or "", deque())
        for i, queued in enumerate(queue):
            if queued is call:
                del queue[i]
                return True
        return False

    def _prune(self, expert: str) -> None:
        queue = self.queues.get(expert)
        while queue and queue[0].cancelled:
            queue.popleft()

    def oldest(self, expert: str) -> float:
        """Arrival of the expert's oldest live queued request (inf when none)."""
        self._prune(expert)
        queue = self.queues.get(expert)
        return queue[0].queued_at if queue else math.inf

    def depth(self) -> dict[str, int]:
        """Queued (live) requests per expert."""
        return {name: sum(not c.cancelled for c in q) for name, q in self.queues.items()}

    def pending(self) -> int:
        return sum(self.depth().values())

    def next_use(self) -> dict[str, float]:
        """Lookahead: for each expert, when it is next needed (its oldest queued arrival; inf = never)."""
        return {name: self.oldest(name) for name in self.queues}

    def pick(self, running: str | None, resident: Iterable[str], now: float) -> Pick | None:
        """Which expert runs next, or None when nothing is queued."""
        waiting = {name: self.oldest(name) for name in list(self.queues)}
        waiting = {name: t for name, t in waiting.items() if t != math.inf}
        if not waiting:
            return None
        by_age = sorted(waiting, key=lambda name: (waiting[name], name))
        oldest = by_age[0]
        in_turn = running is not None and running == self.turn and self.owed > 0
        if self.arrival_order:
            choice, reason = oldest, "oldest"
        elif now - waiting[oldest] > self.max_wait_s and oldest != running and not in_turn:
            choice, reason = oldest, "aged"
        elif running in waiting:
            choice, reason = running, "stay"
        else:
            loaded = [name for name in by_age if name in set(resident)]
            choice, reason = (loaded[0], "resident") if loaded else (oldest, "oldest")
        upcoming = tuple(name for name in by_age if name != choice)
        return Pick(choice, reason, upcoming)

    def take(self, expert: str, limit: int) -> list[Call]:
        """Dequeue up to ``limit`` live requests of ``expert``, oldest first (another expert than
        the last one taken from begins a turn: the requests it has queued now)."""
        if expert != self.turn:
            self.turn, self.owed = expert, self.depth().get(expert, 0)
        out: list[Call] = []
        queue = self.queues.get(expert)
        while queue and len(out) < limit:
            call = queue.popleft()
            if not call.cancelled:
                out.append(call)
        self.owed = max(0, self.owed - len(out))
        return out
