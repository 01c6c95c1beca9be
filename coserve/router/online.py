"""Learning from traffic: expert scores updated from feedback, and a cost weight that holds a budget.

* ``ScorePosterior`` keeps a Beta(alpha, beta) per (category, expert), started from the offline outcome table
  with ``prior_strength`` pseudo-counts per cell and updated with scores in [0, 1] (a thumbs up is 1, down is 0;
  ``signal`` counts a failure, time-out or fallback as a 0 where the router was built with that signal enabled).
  A score ``s`` adds ``s`` to alpha and ``1 - s`` to beta. The total count of a cell is capped at ``max_count``
  (both parameters are scaled down together), so old evidence fades slowly. With ``change`` set, a
  CUSUM per expert (``drift.ChangeDetector``) watches the residuals of its feedback; on an alarm the
  expert's means move by the estimated shift and its cells keep at most ``reset_count`` pseudo-counts
  (``rebase``), so a changed expert is re-learnt from the feedback that follows. A residual is measured
  against the posterior mean, or (``ChangeSettings.baseline`` ``feedback``) against the running mean of
  the cell's own earlier feedback (``drift.FeedbackBaseline``), which a wrong offline table does not move.
  ``ChangeSettings.model`` ``proportional`` (session 12, ``drift_weighted``): each residual, against the score
  the prompt was expected to have, counts by that score, and an alarm moves each cell by its share of its mean.
  ``calibration`` (session 13, ``drift_calibration``; set by its owner, None by default): the detector reads
  each residual less its cell's offset, learnt from the prior outcomes before the stream. ``ChangeSettings.anchor``
  (session 13, ``drift_fast``): a residual is read against its cell's estimate when the expert's down side last
  left 0. ``confirm`` (session 15, ``online_confirm``) re-tests a downward alarm's move on the expert's feedback
  and reverts a false one.
* ``BudgetController`` holds the operator's target average cost with a dual variable, the cost weight (score
  units per target unit of cost), in two parts: a feed-forward ``base``, the weight the map needs for the
  category mix of the last ``mix_window`` requests (``drift.weight_for_mix``, refreshed every ``MIX_EVERY``
  served requests; 0 without a mix window), and an integral part ``weight``: after each served request,
  ``weight += step * (cost / target - 1)``, floored so that the sum stays >= ``-weight_floor`` and capped
  (``online_model.weight_cap``, from the costs). Over any stretch where neither bound binds, the overspend is
  exactly ``(weight_end - weight_start) * target / step``: the feed-forward part takes the jumps of the mix,
  so the integral part moves less. The recent requests are kept by ``online_mix.RecentMix``, which
  (``mix_jump`` > 0) reads the weight from the last ``mix_short`` requests alone while their mix differs from
  the window's older ones; with ``refresh_on_alarm`` the feed-forward weight is also re-solved at once when
  the detector moves an expert's means, so an alarm does not overspend the requests until the next refresh.
  The budget's other settings (``underspend_debt``, ``fine_weight``, ``explore_at_zero``, ``weight_floor``,
  ``alarm_explore``, ``alarm_explore_any_weight``, ``ChangeSettings.shift_share``) are described where they act
  (``online_model``, ``online_choice``, ``online_alarm``, ``drift``) and the tuning that chose their defaults is
  in docs/adapt-tuning.md.
* ``expert_rate`` > 0: an offset per expert, pooled over categories and learnt at that rate from every
  residual of its feedback, is added to each of its cells (``ScorePosterior.estimate``), so a change of
  the whole expert reaches the prompts of every category, not only those of cells with feedback.
* ``granularity``: ``category`` routes by category (below); ``prompt`` routes each request by the
  offline per-prompt prediction ``pred[e]`` of every expert's score (a trained router's ``scores``),
  corrected by what feedback taught about its category: ``pred[e] + mean[k, e] - S[k, e]`` (``S`` the
  offline table the posteriors started from). In that mode a feedback score ``s`` enters the cell as
  ``clip(s - pred[e] + S[k, e], 0, 1)``, so ``mean[k, e] - S[k, e]`` estimates the mean residual of the
  offline predictor on (k, e), unbiased by which prompts of k were sent to e; the feed-forward weight
  is the smallest whose per-prompt choices over the last ``mix_window`` requests cost at most the target.
* ``OnlineRouter`` decides with an immutable, versioned ``MapSnapshot``: per category, the expert maximising
  ``mean - effective weight * cost / target`` (ties to the cheaper, as in ``mapping``), among the experts a
  request allows; its base ``online_choice.OnlineChoice`` makes each request's choice, with Thompson
  exploration under ``explore_cap`` and the hooks that may route it elsewhere. The snapshot is rebuilt from the
  posterior means and the weight after every ``resolve_every`` updates and swapped under a lock: a reader sees
  one whole map, never a mix.
* ``neighbours`` (prompt mode, session 11, ``online_neighbours``) corrects a prompt's estimates by the feedback
  residuals of its nearest remembered prompts; ``probe`` (``online_probe``) routes requests to a suspect expert;
  ``kg`` (session 16, ``online_kg``) explores under the cap by the value of information, not a Thompson draw.

``export_state``/``restore`` turn the posteriors, the weight and the map version into JSON values and back
(``online_saved`` holds the layout: ``export_router`` writes it, ``parse_state`` checks a saved state; ``resume``
warns and keeps the offline map where a saved state does not fit). Pure numbers, seeded randomness; this module
knows nothing about HTTP, the store or outcome files.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from coserve.config_routing import NeighbourSettings, OnlineSettings
from coserve.router.drift import ChangeSettings
from coserve.router.drift_calibration import CellCalibration
from coserve.router.drift_fast import anchored_correction
from coserve.router.drift_weighted import cell_shift, restore_detector
from coserve.router.online_alarm import AlarmExploration, AlarmRevert
from coserve.router.online_choice import OnlineChoice
from coserve.router.online_confirm import ChangeConfirm, ConfirmSettings
from coserve.router.online_kg import KGSettings, KnowledgeGradient
from coserve.router.online_knobs import router_options
from coserve.router.online_map import Decision, MapSnapshot, solve_weighted
from coserve.router.online_mix import RecentMix
from coserve.router.online_model import BudgetController, ScorePosterior, weight_cap
from coserve.router.online_neighbours import NeighbourMemory
from coserve.router.online_probe import ChangeProbe, ProbeSettings
from coserve.router.online_saved import export_router, parse_state, resume
from coserve.router.online_shadow import ShadowPick
from coserve.router.online_shift import CategoryEvidence

__all__ = [
    "BudgetController", "ChangeSettings", "Decision", "MapSnapshot", "OnlineRouter", "ScorePosterior", "resume",
    "solve_weighted",
]  # fmt: skip

SIGNALS = frozenset({"failure", "timeout", "fallback"})  # automatic signals an expert's failure can send
GRANULARITIES = ("category", "prompt")  # what a decision is made per: see the module docstring
MIX_EVERY = 25  # served requests between two updates of the feed-forward weight


class OnlineRouter(OnlineChoice):
    """Decisions from a swapped, versioned map; feedback and served costs move it."""

    def __init__(
        self,
        offline: np.ndarray,
        cost: Sequence[float] | np.ndarray,
        target: float,
        *,
        prior_strength: float = 20.0,
        max_count: float = 30.0,
        step: float = 0.005,
        explore_cap: float = 0.02,
        window: int = 500,
        resolve_every: int = 1,
        weight: float = 0.0,
        signals: frozenset[str] = frozenset(),
        seed: int = 0,
        change: ChangeSettings | None = None,
        mix_window: int = 0,
        granularity: str = "category",
        prompt_weight: float = 1.0,
        expert_rate: float = 0.0,
        mix_jump: float = 0.0,
        mix_short: int = 100,
        refresh_on_alarm: bool = False,
        underspend_debt: float = 0.0,
        fine_weight: float = 0.0,
        explore_at_zero: bool = False,
        weight_floor: float = 0.0,
        alarm_explore: int = 0,
        alarm_explore_any_weight: bool = False,
        alarm_explore_underspend: float = 0.0,
        alarm_revert: int = 0,
        alarm_revert_share: float = 0.5,
        neighbours: NeighbourSettings | None = None,
        probe: ProbeSettings | None = None,
        confirm: ConfirmSettings | None = None,
        kg: KGSettings | None = None,
    ) -> None:
        if not 0.0 <= prompt_weight <= 1.0:
            raise ValueError("prompt_weight must be in [0, 1]")
        self.prompt_weight = float(prompt_weight)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
        self.granularity = granularity
        self.posterior = ScorePosterior(offline, prior_strength, max_count, expert_rate)
        self.offline = self.posterior.mean()  # S: the table the posteriors started from
        self.change = change
        # the CUSUM per expert, and the feedback-only means its residuals are measured against (None: the posterior)
        self.detector, self.baseline = restore_detector(None, change, *self.posterior.shape)
        self.calibration: CellCalibration | None = None  # per cell, the offset the detector's residuals are read less
        self.shadow: ShadowPick | None = None  # a second, judged answer for a share of requests (online_shadow)
        self.alarms = 0  # changes the detector noticed (that moved an expert)
        self.alarm_log: deque[dict[str, Any]] = deque(maxlen=1000)  # every alarm: served requests, expert, shift
        self.recent = RecentMix(mix_window, self.posterior.shape[0], mix_jump, mix_short)  # the feed-forward's input
        self.mix_window, self.refresh_on_alarm = int(mix_window), bool(refresh_on_alarm)
        self._served = 0
        self.cost = np.asarray(cost, dtype=np.float64)
        if self.cost.shape != (self.posterior.shape[1],) or not np.isfinite(self.cost).all():
            raise ValueError("cost must give a finite cost for every expert")
        if not 0.0 <= explore_cap <= 1.0:
            raise ValueError("explore_cap must be in [0, 1]")
        self.controller = BudgetController(
            target, step, weight, window, underspend_debt, fine_weight, weight_floor, weight_cap(self.cost, target)
        )  # the cap: past it no choice changes (as where a request's constraints force dear experts)
        self.explore_cap = float(explore_cap)
        self.explore_at_zero = bool(explore_at_zero)  # explore, beyond the cap, where the cost weight is 0
        self.after_alarm = AlarmExploration(
            self.posterior.shape[1], alarm_explore, alarm_explore_any_weight, alarm_explore_underspend
        )  # an expert an alarm moved, re-tested
        pool = 0.0 if change is None else change.shift_pool
        self.episode = CategoryEvidence(*self.posterior.shape, pool)  # a drop's move per category (online_shift)
        self.reverter = AlarmRevert(*self.posterior.shape, alarm_revert, alarm_revert_share)  # a starved move, back
        self.probe = ChangeProbe(self.posterior.shape[1], probe)  # route to a suspect expert (online_probe)
        self.confirm = ChangeConfirm(self.posterior.shape[1], confirm)  # a downward alarm re-tested (online_confirm)
        if not signals <= SIGNALS:
            raise ValueError(f"unknown signals {sorted(signals - SIGNALS)}; known: {sorted(SIGNALS)}")
        self.signals = signals  # the automatic signals counted as a score of 0
        self.explored: deque[bool] = deque(maxlen=window)
        self.kg = KnowledgeGradient(self.posterior.shape[1], window, kg)  # explore_policy kg (online_kg)
        self.resolve_every = max(1, int(resolve_every))
        self.rng = np.random.default_rng(seed)
        self._lock = threading.RLock()  # serving threads choose, feed back and re-solve concurrently
        self._pending = 0
        self._snapshot = self._solve(0)
        if neighbours is not None and granularity != "prompt":
            raise ValueError("neighbours correct per-prompt estimates: they need granularity prompt")
        # feedback residuals on earlier prompts, to correct similar ones (None: off)
        self.neighbours = None if neighbours is None else NeighbourMemory(neighbours, self.posterior.shape[1])

    @classmethod
    def from_settings(
        cls,
        offline: np.ndarray,
        cost: Sequence[float] | np.ndarray,
        target: float,
        settings: OnlineSettings,
        seed: int = 0,
    ) -> OnlineRouter:
        """The router ``router.online`` describes (the server's and ``coserve bench adapt``'s one way to
        build it, so both run the same knobs and the tuned defaults live in OnlineSettings only)."""
        return cls(offline, cost, target, seed=seed, **router_options(settings))

    @property
    def snapshot(self) -> MapSnapshot:
        """The map in force (read without locking: the reference swap is atomic)."""
        return self._snapshot

    def _solve(self, version: int) -> MapSnapshot:
        means = self.posterior.estimate()
        weight = self.controller.effective
        assignment = solve_weighted(means, self._scaled_cost(), weight)
        return MapSnapshot(version, weight, means, tuple(int(e) for e in assignment))

    def resolve(self) -> MapSnapshot:
        """Re-solve the map from the posterior means and the weight, and swap it in (version + 1)."""
        with self._lock:
            self._pending = 0
            self._snapshot = self._solve(self._snapshot.version + 1)
            return self._snapshot

    def _changed(self) -> None:
        self._pending += 1
        if self._pending >= self.resolve_every:
            self.resolve()

    def shadow_for(
        self,
        category: int,
        chosen: int,
        allowed: Sequence[bool] | np.ndarray | None = None,
        predicted: Sequence[float] | np.ndarray | None = None,
    ) -> int | None:
        """The expert that also answers a request ``chosen`` serves, in the shadow (None: none; always without
        ``shadow``), from the snapshot in force (``online_shadow``)."""
        if self.shadow is None:
            return None
        row = self._prompt_row(category, None if predicted is None else np.asarray(predicted))
        mask = None if allowed is None else np.asarray(allowed, dtype=bool)
        with self._lock:
            shift = 0.0 if row is None else row - self.offline[category]
            return self.shadow.pick(self.posterior, self._snapshot, self._scaled_cost(), category, chosen, mask, shift)

    def served(self, expert: int, shadow: int | None = None) -> None:
        """A request was served by ``expert`` (and answered in the shadow by ``shadow``): its cost, the shadow's
        included, moves the weight."""
        with self._lock:
            spent = float(self.cost[expert]) if shadow is None else float(self.cost[expert] + self.cost[shadow])
            self.controller.observe(spent)
            self._served += 1
            for starved, shift in self.reverter.served(expert):  # alarm_revert (online_alarm)
                self.posterior.rebase(starved, shift, np.inf)  # the means rise, the counts stay
                if self.detector is not None:
                    self.detector.rebased(starved)
            if self.mix_window > 0 and self._served % MIX_EVERY == 0:
                self._feed_forward()
            self._changed()

    def _feed_forward(self) -> None:
        """Set the controller's feed-forward weight from the latest requests' category mix (prompt mode: each
        recent prompt's corrected row, weighted alike)."""
        per_prompt = self.granularity == "prompt"
        estimate = self.posterior.estimate()
        correction = estimate - self.offline if per_prompt else estimate
        least = -self.controller.weight_floor  # two-sided: the weight that spends the target, down to this
        self.controller.set_base(self.recent.weight(correction, self._scaled_cost(), per_prompt, least))

    def signal(self, category: int, expert: int, kind: str) -> bool:
        """An automatic signal (``failure``, ``timeout`` or ``fallback``): a score of 0 where the kind is
        enabled; False where it is not (nothing changes)."""
        if kind not in SIGNALS:
            raise ValueError(f"unknown signal {kind!r}; known: {sorted(SIGNALS)}")
        if kind not in self.signals:
            return False
        self.feedback(category, expert, 0.0)
        return True

    def export_state(self, categories: Sequence[str], experts: Sequence[str]) -> dict[str, Any]:
        """Posteriors, weight and map version as plain JSON values, labelled with the names given."""
        with self._lock:
            return export_router(self, self._snapshot.version, categories, experts)

    def restore(self, state: dict[str, Any], categories: Sequence[str], experts: Sequence[str]) -> None:
        """Resume from ``export_state``'s output; ValueError (nothing changed) unless it fits this router."""
        saved = parse_state(state, categories, experts, self.granularity, self.posterior.shape)
        detector, baseline = restore_detector(state.get("change"), self.change, *self.posterior.shape)
        after_alarm = self.after_alarm.restored(state.get("alarm_explore"))
        reverter = self.reverter.restored(state.get("alarm_revert"))
        probe = self.probe.restored(state.get("change_probe"))
        kg = self.kg.restored(state.get("kg_counts"), state.get("kg_settle"))
        with self._lock:
            self.after_alarm, self.probe, self.confirm, self.kg = after_alarm, probe, self.confirm.restored(state), kg
            self.detector, self.baseline, self.reverter = detector, baseline, reverter
            self.posterior.alpha, self.posterior.beta, self.posterior.offset = saved.alpha, saved.beta, saved.offset
            # the feed-forward part (until its next refresh reads the new mix) and the integral part, within this
            # router's floor and cap (a weight above the cap is clipped with a warning)
            self.controller.resume(saved.weight, saved.base if self.mix_window > 0 else None)
            self._pending = 0
            self._snapshot = self._solve(saved.version)

    def feedback(
        self,
        category: int,
        expert: int,
        score: float,
        predicted: float | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        shadow: bool = False,
    ) -> None:
        """An observed score in [0, 1] for ``expert`` on ``category``; in prompt mode, ``predicted`` is the
        offline prediction of that expert on the scored prompt (the cell learns the residual against it;
        without it the score counts as for a prompt predicted at the category's offline mean); with
        ``neighbours`` and the prompt's ``vector``, the score less the prompt's estimate is remembered. A
        ``shadow`` answer's score is read without the calibration, which models the bias of the prompts an
        expert is chosen for (a shadow expert was not chosen)."""
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"a score must be in [0, 1], got {score}")
        observed, given, offset = score, score, 0.0
        if self.granularity == "prompt" and predicted is not None:
            offset = self.prompt_weight * (float(predicted) - float(self.offline[category, expert]))
            observed = score - offset  # the score as its category's cell sees it (unclipped)
            score = min(1.0, max(0.0, observed))
        with self._lock:
            # the score this prompt was expected to have (the proportional change model weighs by it)
            expected = min(1.0, max(0.0, float(self.posterior.estimate()[category, expert]) + offset))
            if self.neighbours is not None and vector is not None and predicted is not None:
                estimate = float(self.posterior.estimate()[category, expert])  # before this score moves it
                self.neighbours.add(np.asarray(vector), expert, observed - estimate)
            # the residual against the estimate it was predicted with, or (feedback baseline) against the
            # cell's own earlier feedback (None while too little)
            cell_count = float(self.posterior.count()[category, expert])  # before this score joins it
            calibration = None if shadow else self.calibration  # a shadow's score: read uncalibrated
            calibrated = 0.0 if calibration is None else calibration.read(category, expert, cell_count)
            calibrated -= anchored_correction(self.detector, category, expert, self.posterior.estimate())  # drift_fast
            residual: float | None = self.posterior.update(category, expert, score)
            self.kg.scored()  # the feedback share explore_policy kg reads
            if self.baseline is not None:
                residual = self.baseline.residual(category, expert, score)
            if self.change is not None and self.change.model == "proportional":
                residual = given - expected  # against the prompt's own expected score
            residual = None if residual is None else residual - calibrated
            if shadow and self.shadow is not None and not self.shadow.detected:
                residual = None  # a shadow's score kept from the change detector (the replay's shadow_detected)
            if self.confirm.feedback(category, expert, score, calibrated, self.posterior, self.detector):
                residual = None  # a false alarm reverted (online_confirm): the detector restarts after this score
            shift = (
                None if self.detector is None or residual is None else self.detector.observe(expert, residual, expected)
            )
            by_category = None  # a drop's move per category (online_shift; None: the pooled shift everywhere)
            if residual is not None and self.detector is not None and self.episode.pool > 0:
                runs = shift is not None or bool(self.detector.count["down"][expert] > 0)
                self.episode.observed(category, expert, residual, runs)
                if shift is not None:  # the detector restarted both sides: so does the episode
                    by_category = self.episode.move(expert, shift) if shift < 0 else None
                    self.episode.forget(expert)
            if shift is not None:
                self.alarm_log.append({"served": self._served, "expert": expert, "shift": shift})
            if shift is not None and self.change is not None and (shift < 0 or self.change.upward):
                share = self.change.shift_share if self.change.move_mean else 0.0
                if shift < 0:
                    self.after_alarm.alarmed(expert)
                    self.kg.alarmed(expert)  # kg_settle: no value-of-information bonus for a while (online_kg)
                    self.confirm.opened(expert, self.posterior, shift, self.alarm_log[-1])  # before the move
                moved = cell_shift(self.change.model, shift * share, self.posterior.mean()[:, expert])
                if by_category is not None:
                    moved = share * np.asarray(by_category)  # the flat model's move, per category
                if shift < 0:
                    self.reverter.alarmed(expert, moved)
                self.posterior.rebase(expert, moved, self.change.reset_count)
                if self.neighbours is not None:
                    self.neighbours.forget(expert)  # its residuals were measured against the old means
                if self.baseline is not None:
                    self.baseline.forget(expert)
                if self.detector is not None:
                    self.detector.rebased(expert)  # a running reference restarts at 0 (drift_reference)
                self.alarms += 1
                if self.refresh_on_alarm and self.mix_window > 0 and len(self.recent) > 0:
                    self._feed_forward()  # the moved means change the weight the mix needs: now, not in 25 requests
            self._changed()
