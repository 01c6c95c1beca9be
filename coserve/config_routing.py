"""The ``routing:`` section of a library file: one choice per request, or a cascade (docs/library.md);
and ``router.online``, learning from traffic (docs/adapt.md).

A leaf like coserve.config (which embeds it): it knows nothing about the check's model or the engine.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CascadeSettings", "NeighbourSettings", "OnlineSettings", "RoutingSettings", "routing_problem"]


class CascadeSettings(BaseModel):
    """How a cascade escalates (coserve.engine.cascade)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: str  # the answer check (``coserve train-check`` JSON), relative to the library file
    threshold: float = Field(0.5, ge=0, le=1)  # P(good answer) at or above this: the answer is returned
    max_steps: int = Field(2, ge=1, le=8)  # experts asked at most per request (1: never escalate)
    buffer_streams: bool = False  # streamed requests: generate, check, then stream (else: no check)
    # Streamed, unbuffered: a router confidence below this escalates before the first token.
    stream_min_confidence: float = Field(0.0, ge=0, le=1)
    # Run each answer's code on the prompt's own examples (a sandboxed child process; model code runs
    # on this host: docs/library.md, "Cascades"). Off: the examples_passed signal is unknown.
    run_examples: bool = Field(False, strict=True)
    # Where the cascade runs: category -> the expert it starts from (the check escalates from there to
    # larger experts of the decision's order); a category not listed answers by single choice, in one
    # step. None: every category cascades from the router's own expert.
    categories: dict[str, str] | None = None
    # Live guard (coserve.engine.cascade_guard): per category, when more than the break-even share of
    # the last ``guard_window`` cascades escalated, answer by single choice; every ``guard_probe``-th
    # request still cascades. 0: off. ``guard_max_escalation``: the share, instead of break-even.
    guard_window: int = Field(0, ge=0)
    guard_probe: int = Field(10, ge=1)
    guard_max_escalation: float | None = Field(None, gt=0, le=1)
    # Start gate (coserve.router.gate; ``coserve train-check --gate``): P(the start expert's answer is
    # good | prompt), before generating; below ``start_gate_threshold`` (None: break-even, params of
    # the start / params of the next rung) the cascade skips the start and asks the next rung first.
    start_gate: str | None = None  # the gate file (JSON), relative to the library file; None: off
    start_gate_threshold: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _gate_threshold_needs_a_gate(self) -> CascadeSettings:
        if self.start_gate_threshold is not None and self.start_gate is None:
            raise ValueError("start_gate_threshold is set but start_gate (the gate file) is not")
        return self


class RoutingSettings(BaseModel):
    """``single``: the router's expert answers. ``cascade``: it answers first; the check may escalate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["single", "cascade"] = "single"
    cascade: CascadeSettings | None = None

    @model_validator(mode="after")
    def _cascade_settings(self) -> RoutingSettings:
        if self.mode == "cascade" and self.cascade is None:
            raise ValueError("mode cascade needs a cascade: section (at least cascade.check)")
        if self.mode == "single" and self.cascade is not None:  # a forgotten mode: nothing would cascade
            raise ValueError(
                "a cascade: section is set but mode is single (the default): add mode: cascade, or drop it"
            )
        return self


def routing_problem(routing: RoutingSettings, categories: Collection[str], experts: Collection[str]) -> str | None:
    """What is wrong with the routing section's references to the library's categories and experts
    (None: nothing). ``categories`` empty: a trained router's, not known here (not checked)."""
    cascade = routing.cascade
    for category, start in ((cascade.categories or {}) if cascade else {}).items():
        if categories and category not in categories:
            return f"routing.cascade.categories.{category}: not a category of this library"
        if start not in experts:
            return f"routing.cascade.categories.{category}: unknown expert {start!r} (known: {', '.join(experts)})"
    return None


class NeighbourSettings(BaseModel):
    """Prompt mode's neighbour correction (coserve.router.online_neighbours, docs/adapt.md): off unless set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(20, ge=1)  # nearest remembered prompts fed back for an expert, at most
    memory: int = Field(2000, ge=1, le=100_000)  # the last this many feedback residuals are kept
    shrink: float = Field(5.0, ge=0)  # pseudo-count of a residual of 0: sum / (neighbours + shrink)
    min_similarity: float = Field(0.5, ge=-1, le=1)  # cosine similarity a neighbour needs at least
    skip_identical: bool = False  # measurement: leave out remembered prompts with the very same vector


class OnlineSettings(BaseModel):
    """Learning from traffic (coserve.router.online, docs/adapt.md): needs router.trained and a budget."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # an infinite step is no setting

    # defaults chosen by scripts/adapt_tune.py on a tuning split with the per-prompt predictor `coserve train`
    # fits by default (stack on minilm-static+features; session 9, docs/adapt-tuning.md); the detector's
    # drift and level and the mix-jump test by its --stage levers (session 10), change_upward by --stage underspend,
    # weight_floor by --stage s11 (session 11)
    prior_strength: float = Field(50.0, gt=0)  # pseudo-counts of the trained router's scores
    max_count: float = Field(100.0, gt=0)  # cap on a score's pseudo-counts (old evidence fades)
    step: float = Field(0.005, gt=0)  # the budget controller's step
    explore_cap: float = Field(0.0, ge=0, le=1)  # most share of traffic that explores
    window: int = Field(500, gt=0)  # requests in the sliding window (realised cost, exploring share)
    mix_window: int = Field(500, ge=0)  # requests whose category mix sets the feed-forward weight (0: none)
    change_threshold: float = Field(8.0, ge=0)  # a changed expert's alarm level (0: no change detector)
    change_drift: float = Field(0.075, ge=0)  # half the smallest shift in an expert's scores worth noticing
    reset_count: float = Field(2.0, gt=0)  # pseudo-counts a changed expert's scores keep
    move_mean: bool = True  # a changed expert's means also move by the estimated shift
    # what the detector's residuals are measured against: the posterior mean (offline table + feedback), or
    # the cell's own earlier feedback, which a wrong offline table does not move (docs/adapt.md)
    change_baseline: Literal["posterior", "feedback"] = "posterior"
    change_min_feedback: int = Field(20, ge=1)  # feedback baseline: scores a cell needs before it is tested
    signals: tuple[Literal["failure", "timeout", "fallback"], ...] = ()  # counted as a score of 0
    # per what a decision is made: the category's map, or each prompt's offline prediction corrected by
    # its category's feedback (docs/adapt.md)
    granularity: Literal["category", "prompt"] = "prompt"
    prompt_weight: float = Field(1.0, ge=0, le=1)  # share of a prompt's predicted offset from its category kept
    # session 10 (docs/adapt.md): a per-expert offset pooled over categories, learnt at this rate (0: none)
    expert_rate: float = Field(0.0, ge=0, lt=1)
    mix_jump: float = Field(0.3, ge=0, le=1)  # mix distance (total variation) read as a jump (0: never)
    mix_short: int = Field(150, gt=0)  # after a jump, the feed-forward weight reads only this many requests
    refresh_on_alarm: bool = False  # re-solve the feed-forward weight at once when an alarm moves means
    # session 10, branch underspend (docs/adapt.md): underspend at weight 0 the integral part carries and pays
    # back, in requests at the target (0: dropped), and the weight below which the step shrinks (0: never)
    underspend_debt: float = Field(0.0, ge=0)
    fine_weight: float = Field(0.0, ge=0)
    # an alarm of a rise also rebases the expert (False, the default since --stage underspend: only a drop does)
    change_upward: bool = False
    explore_at_zero: bool = False  # requests decided at cost weight 0 explore (Thompson) beyond explore_cap
    # session 11 (docs/adapt.md): the cost weight may fall to -weight_floor (a two-sided target; 0: one-sided;
    # 0.005 chosen by --stage s11), an expert a downward alarm moved may be explored at weight <= 0 for this
    # many requests (0: never), and an alarm moves the means by this share of the estimated shift
    weight_floor: float = Field(0.005, ge=0)
    alarm_explore: int = Field(6000, ge=0)  # 6,000 with alarm_explore_underspend 0.05 since session 20
    # session 14, branch nofire14: alarm_explore also where the cost weight is > 0 (the move re-tested; online_alarm)
    alarm_explore_any_weight: bool = False
    # session 20 (docs/adapt.md, the collapse guard): alarm_explore only while the window's realised cost is more
    # than this share under the target (0: wherever the weight is <= 0); the default is inert at alarm_explore 0,
    # and alarm_explore_any_weight overrides it unless both are set
    alarm_explore_underspend: float = Field(0.05, ge=0, lt=1)
    change_shift_share: float = Field(1.0, ge=0, le=1)
    # session 20 (docs/adapt.md): a downward alarm moves each category by its own residuals in the episode, shrunk
    # toward the pooled shift with this many pseudo-counts (0: every category by the pooled shift; online_shift)
    change_shift_pool: float = Field(0.0, ge=0, allow_inf_nan=False)
    # session 11, branch knn11 (docs/adapt.md): in prompt mode, correct a prompt's estimates by the residuals
    # of feedback on its nearest earlier prompts (None: off)
    neighbours: NeighbourSettings | None = None
    # session 12 (docs/adapt.md): the detector adds each residual alike (flat), or weighs it by the score the
    # prompt was expected to have (proportional: a risk-adjusted CUSUM, coserve.router.drift_weighted), and then
    # with change_variance_floor > 0 divides it by that score's variance, at least this
    change_model: Literal["flat", "proportional"] = "flat"
    change_variance_floor: float = Field(0.0, ge=0, le=0.25)
    # session 12, branch bias12 (docs/adapt.md): the detector tests residuals as they are (zero), or less a slow
    # running mean of the expert's own residuals, learnt while its CUSUM is quiet, with this memory in feedbacks
    # (running: a self-starting CUSUM, coserve.router.drift_reference; the router's selection bias is no change)
    change_reference: Literal["zero", "running"] = "zero"
    change_reference_memory: float = Field(1000.0, ge=1)
    # session 13, branch calib13 (docs/adapt.md): the detector reads each residual less its (category, expert)
    # cell's bias, learnt out of fold on the prior outcomes (cell), or less its share still unlearnt by the cell
    # (fading); shrunk toward the expert's pooled bias with this many pseudo-counts (coserve.router.drift_calibration;
    # fading 20 chosen by --stage s13). It acts in prompt mode against the posterior only (``calibrates``)
    change_calibration: Literal["none", "cell", "fading"] = "fading"
    change_calibration_shrink: float = Field(20.0, gt=0)
    # session 13, branch adapt13b (docs/adapt.md, coserve.router.drift_fast; both off): the detector reads residuals
    # against each cell's estimate when the expert's down side last stood at 0 (anchor), and a second, down-only
    # CUSUM with this drift and level alarms too (fast lane; threshold 0: none)
    change_anchor: bool = False
    change_fast_drift: float = Field(0.15, ge=0)
    change_fast_threshold: float = Field(0.0, ge=0)
    # session 13, branch probe13 (docs/adapt.md, coserve.router.online_probe; off): while an expert's down side stands
    # above this share of the alarm level, a request that allows it and whose choice scores within
    # change_probe_margin of it in the router's objective is routed to it, at most change_probe_requests per episode
    change_probe: float = Field(0.0, ge=0, lt=1)
    change_probe_requests: int = Field(100, ge=1)
    change_probe_margin: float = Field(0.05, ge=0)
    # session 13, branch probe13b (off): probe a suspect only while its share of the last 500 routed requests stands
    # below this ratio of its share of the last 5,000 (a busy expert suspect by noise is not probed)
    change_probe_starved: float = Field(0.0, ge=0, le=1)
    # session 15, branch confirm15 (docs/adapt.md, coserve.router.online_confirm; off): a downward alarm's move is
    # re-tested: while the episode is open, a request for which the expert would be the greedy choice under its
    # pre-alarm means is routed to it (at most change_confirm_requests), and its feedback feeds a Gaussian SPRT (sd
    # change_confirm_sd, both error rates change_confirm_error) of no change against the alarm's shift; no change
    # wins: the pre-alarm means come back
    change_confirm: bool = False
    change_confirm_requests: int = Field(200, ge=1)
    change_confirm_sd: float = Field(0.45, gt=0)
    change_confirm_error: float = Field(0.05, gt=0, lt=0.5)
    # session 16, branch voi16 (docs/adapt.md, coserve.router.online_kg; off): how an exploration under explore_cap
    # picks its expert: a Thompson draw, or the objective plus the value of one more observation of each cell (the
    # online knowledge gradient) over the next kg_horizon requests, times the feedback share learnt online
    explore_policy: Literal["thompson", "kg"] = "thompson"
    kg_horizon: float = Field(100.0, gt=0)  # session 16: 100 scored best of 100 and 300
    # session 16, branch voi16b (off at 0): for kg_settle routed requests after a downward alarm moved an expert, kg
    # gives it no bonus (it keeps the traffic it wins as the greedy choice, and is not re-tested for its new spread)
    kg_settle: int = Field(0, ge=0)
    # session 18 (off at 0; coserve.router.online_alarm.AlarmRevert): where a downward alarm's expert then gets not one
    # of the next alarm_revert routed requests, alarm_revert_share of its move is taken back, once
    alarm_revert: int = Field(0, ge=0)
    alarm_revert_share: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _neighbours_need_prompts(self) -> OnlineSettings:
        if self.neighbours is not None and self.granularity != "prompt":
            raise ValueError("neighbours correct per-prompt estimates: they need granularity prompt")
        if self.change_model == "proportional" and self.change_baseline != "posterior":
            raise ValueError(
                "change_model proportional weighs residuals against the posterior: change_baseline posterior"
            )
        fast = self.change_anchor or self.change_fast_threshold > 0
        if fast and (self.change_model != "flat" or self.change_baseline != "posterior"):
            raise ValueError(
                "change_anchor and change_fast_threshold read the flat model's residuals against the posterior:"
                " change_model flat and change_baseline posterior"
            )
        if self.change_probe > 0 and self.change_threshold == 0:
            raise ValueError(
                "change_probe probes an expert the change detector suspects: it needs change_threshold > 0"
            )
        if self.alarm_explore_any_weight and self.alarm_explore == 0:
            raise ValueError("alarm_explore_any_weight widens alarm_explore: it needs alarm_explore > 0")
        plain = self.change_model == "flat" and self.change_baseline == "posterior" and self.change_reference == "zero"
        if self.change_shift_pool > 0 and not (plain and self.move_mean and not fast):
            raise ValueError(
                "change_shift_pool splits the plain detector's move by category: it needs change_model flat,"
                " change_baseline posterior, change_reference zero, move_mean, and no anchor or fast lane"
            )
        explicit = "alarm_explore_underspend" in self.model_fields_set  # the default is inert where it cannot act
        if (
            explicit
            and self.alarm_explore_underspend > 0
            and (self.alarm_explore == 0 or self.alarm_explore_any_weight)
        ):
            raise ValueError(
                "alarm_explore_underspend narrows alarm_explore to a collapsed budget: it needs alarm_explore > 0"
                " and alarm_explore_any_weight off"
            )
        if self.change_confirm and (
            self.change_threshold == 0 or self.change_model != "flat" or self.change_baseline != "posterior"
        ):
            raise ValueError(
                "change_confirm re-tests a downward alarm against the posterior's pre-alarm means: it needs"
                " change_threshold > 0, change_model flat and change_baseline posterior"
            )
        if self.explore_policy == "kg" and self.explore_cap == 0:
            raise ValueError("explore_policy kg explores under explore_cap: it needs explore_cap > 0")
        if self.kg_settle > 0 and self.explore_policy != "kg":
            raise ValueError("kg_settle withholds explore_policy kg's bonus: it needs explore_policy kg")
        if self.change_probe_starved > 0 and self.change_probe == 0:
            raise ValueError("change_probe_starved restricts the probe: it needs change_probe > 0")
        inert = self.granularity != "prompt" or self.change_baseline != "posterior"
        if "change_calibration" in self.model_fields_set and self.change_calibration != "none" and inert:
            raise ValueError(
                "change_calibration corrects per-prompt estimates against the posterior: it needs granularity prompt"
                " and change_baseline posterior"
            )
        return self

    @property
    def calibrates(self) -> bool:
        """Whether the change detector reads calibrated residuals (a detector, in prompt mode, against the
        posterior; the default calibration is inert elsewhere, a calibration set explicitly is refused there)."""
        inert = self.granularity != "prompt" or self.change_baseline != "posterior" or self.change_threshold == 0
        return self.change_calibration != "none" and not inert
