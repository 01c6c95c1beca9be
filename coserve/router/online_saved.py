"""The online router's saved state: its layout, written by ``export_router`` and checked by ``parse_state``.

``export_router`` turns a router's posteriors, cost weight and map version, and the state of its change
detector, alarm exploration, probe and confirmation, into JSON values (``OnlineRouter.export_state`` calls it
under the router's lock). ``parse_state`` reads those values back into arrays (``OnlineRouter.restore`` uses
it) and refuses, with a ValueError saying what does not fit, a state of another format, for other categories or
experts, learnt in the other granularity, of another shape, or with impossible values. Keys added after a state
was saved (the per-expert offset, session 10; the feed-forward weight, session 13; the feedback counts, session
16) resume with fresh values where they are missing. ``resume`` restores a state into a router, warning and keeping
the offline map where it does not fit.

Pure values and checks; knows nothing about the router's locking, the store or HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from coserve.router.drift import ChangeDetector, FeedbackBaseline, export_change
from coserve.router.online_alarm import AlarmExploration, AlarmRevert
from coserve.router.online_confirm import ChangeConfirm
from coserve.router.online_kg import KnowledgeGradient
from coserve.router.online_model import BudgetController, ScorePosterior
from coserve.router.online_probe import ChangeProbe

__all__ = ["STATE_FORMAT", "SavedState", "export_router", "parse_state", "resume"]

log = logging.getLogger("coserve.router")

STATE_FORMAT = 1  # export_state's layout; a state of another format is not resumed
MAX_VERSION = 2**53  # a saved map version beyond this is corrupt (a billion updates a second for 285 years)


class Exportable(Protocol):
    """The parts of a router that ``export_router`` saves (``OnlineRouter``'s)."""

    granularity: str
    posterior: ScorePosterior
    controller: BudgetController
    after_alarm: AlarmExploration
    reverter: AlarmRevert
    probe: ChangeProbe
    confirm: ChangeConfirm
    kg: KnowledgeGradient
    detector: ChangeDetector | None
    baseline: FeedbackBaseline | None


def export_router(
    router: Exportable, version: int, categories: Sequence[str], experts: Sequence[str]
) -> dict[str, Any]:
    """``router``'s state at map ``version`` as plain JSON values, labelled with the names given."""
    return {
        "format": STATE_FORMAT,
        "categories": list(categories),
        "experts": list(experts),
        "alpha": router.posterior.alpha.tolist(),
        "beta": router.posterior.beta.tolist(),
        "weight": router.controller.weight,
        "base": router.controller.base,  # the feed-forward part: the weight in force resumes whole
        "target": router.controller.target,
        "version": version,
        "granularity": router.granularity,  # what the cells mean: scores, or residuals of predictions
        "expert_offset": router.posterior.offset.tolist(),  # per expert, added to its cells (expert_rate)
        "alarm_explore": router.after_alarm.export_state(),  # per expert, routed requests it may be explored
        "alarm_revert": router.reverter.export_state(),  # starved downward moves pending half their undoing
        "change_probe": router.probe.export_state(),  # per expert, requests its suspicion may still probe
        "change_confirm": router.confirm.export_state(),  # experts whose alarm is on trial (not resumed)
        "kg_counts": router.kg.export_state(),  # routed requests and scores: the feedback share (explore_policy kg)
        "kg_settle": router.kg.export_settling(),  # per expert, requests left without a kg bonus after an alarm
        **({} if router.detector is None else {"change": export_change(router.detector, router.baseline)}),
    }


@dataclass(frozen=True)
class SavedState:
    """The numbers of a saved state that fit the router resuming it."""

    alpha: np.ndarray  # [K, E] Beta parameters
    beta: np.ndarray  # [K, E]
    weight: float  # the integral part of the cost weight
    version: int  # the map version it was saved at
    offset: np.ndarray  # [E] per-expert offsets (zeros where the state predates them)
    base: float = 0.0  # the feed-forward part of the weight (0 where the state predates session 13)


def parse_state(
    state: dict[str, Any], categories: Sequence[str], experts: Sequence[str], granularity: str, shape: tuple[int, int]
) -> SavedState:
    """``state``'s numbers where it fits a router of ``granularity`` over ``shape`` cells; else ValueError."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown state format {state.get('format')!r}")
    if state.get("categories") != list(categories) or state.get("experts") != list(experts):
        raise ValueError("the state is for other categories or experts")
    learnt = state.get("granularity", "category")  # a state saved before session 8 was learnt per category
    if learnt != granularity:
        raise ValueError(f"the state was learnt per {learnt}, this router routes per {granularity}")
    try:
        alpha = np.asarray(state["alpha"], dtype=np.float64)
        beta = np.asarray(state["beta"], dtype=np.float64)
        weight, version = float(state["weight"]), state["version"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the state is incomplete or malformed: {exc}") from None
    if alpha.shape != shape or beta.shape != shape:
        raise ValueError(f"the state's posteriors are {alpha.shape}, this router's {shape}")
    if not (np.isfinite(alpha).all() and np.isfinite(beta).all() and (alpha > 0).all() and (beta > 0).all()):
        raise ValueError("the state's posteriors must be finite and positive")
    # the integral part is negative wherever the feed-forward part carries the weight, or with underspend_debt
    if not np.isfinite(weight) or isinstance(version, bool) or not isinstance(version, int):
        raise ValueError("the state's weight must be finite and its version a non-negative integer")
    if not 0 <= version <= MAX_VERSION:  # the decision log's INTEGER column and /metrics' float hold it
        raise ValueError(f"the state's version {version} is outside [0, 2**53]")
    base = state.get("base", 0.0)
    if isinstance(base, bool) or not isinstance(base, int | float) or not np.isfinite(base):
        raise ValueError("the state's feed-forward weight must be a finite number")
    return SavedState(alpha, beta, weight, version, _offset(state.get("expert_offset"), shape[1]), float(base))


def _offset(saved: Any, experts: int) -> np.ndarray:
    """A saved per-expert offset (zeros where the state predates it); ValueError where it does not fit."""
    if saved is None:
        return np.zeros(experts)
    try:
        offset = np.asarray(saved, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the state's expert offset is malformed: {exc}") from None
    if offset.shape != (experts,) or not np.isfinite(offset).all() or (np.abs(offset) > 1).any():
        raise ValueError("the state's expert offset must be one number in [-1, 1] per expert")
    return offset


class Resumable(Protocol):
    """A router that restores a saved state (``OnlineRouter``)."""

    def restore(self, state: dict[str, Any], categories: Sequence[str], experts: Sequence[str]) -> None: ...


def resume(router: Resumable, state: dict[str, Any] | None, categories: Sequence[str], experts: Sequence[str]) -> bool:
    """Restore ``state`` into ``router``; False, with a warning, where it does not fit (offline map kept)."""
    if state is None:
        return False
    try:
        router.restore(state, categories, experts)
    except ValueError as exc:
        log.warning("online state not resumed (%s); starting from the offline map", exc)
        return False
    return True
