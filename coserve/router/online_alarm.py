"""Exploring an expert the change detector just moved, for a bounded number of requests (session 11), and
taking back half of a move that left its expert starved (session 18).

A downward alarm on an expert moves its means down and cuts its pseudo-counts. Where the alarm was false
(the offline table's own error, noise), the expert now looks worse than it is; if it is dear, the
router may then send it nothing, so no feedback ever corrects it, and where the cost weight sits at 0
the budget underspends. ``AlarmExploration`` keeps, per expert, how many routed requests it may still
be explored for: an alarm sets it to ``requests``, each routed request counts one down. While it is
above 0, ``OnlineRouter`` lets a request decided at cost weight <= 0 (the budget not binding there)
take a Thompson draw's choice where that choice is such an expert, beyond ``explore_cap``; other
experts are not explored by it (a global exploration at weight 0 lost recovery checks, session 10).

``any_weight`` (``alarm_explore_any_weight``, session 14, branch nofire14) lets it act at any cost weight, the
budget binding too: the moved mean is then provisional and re-tested. A downward alarm moves the expert's
means and cuts its cells to a few pseudo-counts; where the move overshoots (a false alarm, or a table error
the estimated shift exaggerates), the expert loses its traffic, and with no exploration (``explore_cap`` 0)
no feedback ever corrects the move. A Thompson draw of its wide, just-cut posterior picks it only where it
may be the best choice at the weight in force, so the re-test costs little where the move was right and
returns the expert's traffic where it was not (docs/decisions.md, session 14, branch nofire14).

``underspend`` (``alarm_explore_underspend``, session 20) narrows it to a collapsed budget: the re-test acts only
while the realised cost over the controller's window is more than that share under the target. At weight <= 0
alone the router also sits where it spends about the target and no expert is starved; a collapse is the case a
false drop makes in a small library (docs/adapt.md, session 19: with two experts, a false drop of the dear one
left 86-88% of the budget unspent for thousands of requests), and only there is a re-test cheap: the budget it
spends was going unspent.

``AlarmRevert`` (``alarm_revert``, session 18, off at 0) keeps, per expert, the move of its last downward
alarm and the requests routed since. Where the expert got not one of the next ``requests`` routed requests
(the move starved it, so no feedback can ever correct it), a share of the move (``alarm_revert_share``, half
by default) is taken back once: its means rise by that share of the shift while its cells keep their cut
counts, so it is tried again where it may now win, and a few scores settle it. A true drop costs those few
re-tried requests; a false drop of a good, cheap expert (session 15: never routed again, never corrected)
gets its traffic back. Nothing happens where the expert kept any traffic: its own feedback is correcting
the move.

Pure numbers; knows nothing about posteriors, routing or the store (``coserve.router.online`` uses it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["AlarmExploration", "AlarmRevert", "saved_counts"]


class AlarmExploration:
    """Per expert, the routed requests left during which an alarm lets it be explored."""

    def __init__(self, experts: int, requests: int = 0, any_weight: bool = False, underspend: float = 0.0) -> None:
        if experts <= 0 or requests < 0 or not 0.0 <= underspend < 1.0:
            raise ValueError("experts must be positive, requests >= 0 and underspend in [0, 1)")
        self.requests = int(requests)  # requests an alarm opens (0: never)
        self.any_weight = bool(any_weight)  # explore at any cost weight, not only where it is <= 0
        self.underspend = float(underspend)  # > 0: only while the window spends under (1 - this) x the target
        self.left = np.zeros(experts, dtype=np.int64)

    def alarmed(self, expert: int) -> None:
        """The detector moved ``expert``: it may be explored for the next ``requests`` routed requests."""
        self.left[expert] = self.requests

    def open(self) -> np.ndarray:
        """Which experts may be explored now ``[E]`` (bool)."""
        return np.asarray(self.left > 0)

    def acts(self, unbound: bool, spent: Callable[[], float | None] | None = None) -> bool:
        """Whether a request decided with the budget ``unbound`` (cost weight <= 0) or not may explore an
        open expert: some expert is open, and the weight is <= 0 or ``any_weight`` is set; with ``underspend``,
        also ``spent()`` (the window's realised cost over the target; None before any request) is below
        ``1 - underspend`` (read only then)."""
        if not ((unbound or self.any_weight) and bool((self.left > 0).any())):
            return False
        if self.underspend == 0:
            return True
        share = None if spent is None else spent()
        return share is not None and share < 1.0 - self.underspend

    def routed(self) -> None:
        """One request was routed: every open count moves one down."""
        if self.requests > 0:
            np.subtract(self.left, 1, out=self.left, where=self.left > 0)

    def export_state(self) -> list[int]:
        """The counts left, as JSON values."""
        return [int(n) for n in self.left]

    def restored(self, saved: Any) -> AlarmExploration:
        """A copy with these settings and ``saved`` loaded (``restore``); ValueError where it does not fit."""
        fresh = AlarmExploration(len(self.left), self.requests, self.any_weight, self.underspend)
        fresh.restore(saved)
        return fresh

    def restore(self, saved: Any) -> None:
        """Load ``export_state``'s output (None, a state saved before it existed: nothing open), each count
        at most this router's ``requests`` (none where it is 0); ValueError (nothing changed) where it does
        not fit."""
        if saved is None:
            self.left = np.zeros_like(self.left)
            return
        self.left = np.minimum(saved_counts(saved, len(self.left), "alarm exploration"), self.requests)


class AlarmRevert:
    """Per expert, the requests left before a starved downward move is partly taken back, and that move."""

    def __init__(self, categories: int, experts: int, requests: int = 0, share: float = 0.5) -> None:
        if categories <= 0 or experts <= 0 or requests < 0 or not 0.0 < share <= 1.0:
            raise ValueError("categories and experts must be positive, requests >= 0 and share in (0, 1]")
        self.requests = int(requests)  # routed requests a moved expert may go without any (0: never revert)
        self.share = float(share)  # the share of the move taken back
        self.left = np.zeros(experts, dtype=np.int64)  # requests left to watch (0: nothing pending)
        self.routed = np.zeros(experts, dtype=np.int64)  # requests the expert got since its alarm
        self.move = np.zeros((categories, experts))  # the last downward alarm's move of each cell
        self.reverted = 0  # moves half taken back

    def alarmed(self, expert: int, move: np.ndarray | float) -> None:
        """A downward alarm moved ``expert``'s cells by ``move`` (one for all, or one per category)."""
        if self.requests > 0:
            self.left[expert] = self.requests
            self.routed[expert] = 0
            self.move[:, expert] = move

    def served(self, expert: int) -> list[tuple[int, np.ndarray]]:
        """One request was routed to ``expert``; the (expert, shift per category) to apply now: ``share`` of
        each move whose watch just ended with its expert given no request."""
        if self.requests == 0 or not (self.left > 0).any():
            return []
        self.routed[expert] += 1
        ending = np.flatnonzero(self.left == 1)
        np.subtract(self.left, 1, out=self.left, where=self.left > 0)
        due = [(int(e), -self.share * self.move[:, e].copy()) for e in ending if self.routed[e] == 0]
        self.reverted += len(due)
        return due

    def export_state(self) -> dict[str, Any]:
        """Requests left, requests routed and moves, as JSON values."""
        left, routed = [int(n) for n in self.left], [int(n) for n in self.routed]
        return {"left": left, "routed": routed, "move": self.move.tolist()}

    def restored(self, saved: Any) -> AlarmRevert:
        """A copy with these settings and ``saved`` loaded (None: a state saved before it existed, nothing
        pending); ValueError where it does not fit."""
        fresh = AlarmRevert(*self.move.shape, self.requests, self.share)
        if saved is None:
            return fresh
        if not isinstance(saved, dict):
            raise ValueError("the state's alarm revert must be an object")
        experts = self.move.shape[1]
        fresh.left = np.minimum(saved_counts(saved.get("left"), experts, "alarm revert counts"), self.requests)
        fresh.routed = saved_counts(saved.get("routed"), experts, "alarm revert routed counts")
        try:
            move = np.asarray(saved.get("move"), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the state's alarm revert moves are malformed: {exc}") from None
        if move.shape != self.move.shape or not np.isfinite(move).all() or (move > 0).any():
            raise ValueError("the state's alarm revert moves must be one finite shift <= 0 per cell")
        fresh.move = move
        return fresh


def saved_counts(saved: Any, experts: int, what: str) -> np.ndarray:
    """A saved count per expert (``what`` names it in the error) as int64 ``[experts]``; ValueError where it
    is not one whole number >= 0 per expert."""
    try:
        counts = np.asarray(saved, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the state's {what} is malformed: {exc}") from None
    if counts.shape != (experts,) or not np.isfinite(counts).all() or (counts < 0).any() or (counts % 1).any():
        raise ValueError(f"the state's {what} must be one whole number >= 0 per expert")
    return counts.astype(np.int64)
