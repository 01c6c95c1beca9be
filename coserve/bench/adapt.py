"""``coserve bench adapt``: replay an outcome file as drifting traffic through the online router.

The router (``map-logistic``) is fitted on the prior outcomes; its classifier gives each stream item a
category, and its per-category score table starts the posteriors. The stream is replayed as
``requests`` draws with replacement in ``phases`` equal phases; each phase's category mix is a
seeded Dirichlet(0.7) draw over the stream's categories (so the mix jumps at each phase boundary).
A served item's true score is fed back for a ``feedback`` fraction of requests, plus Gaussian noise
of sd ``noise`` (clipped to [0, 1]); with ``shadow`` > 0 that share of requests is also answered in the shadow
by a second expert (``coserve.router.online_shadow``), always judged (its true score plus noise from a generator
of its own), and its cost joins the request's (the controller, the windows, the realised and hindsight cost; the
quality counts the answers only; ``shadow_charged`` false: counted nowhere; ``shadow_detected`` false: the score
teaches the posterior, not the change detector). Halfway, the true scores of the expert with the largest traffic
share under the static map drop by ``shock`` (clipped at 0).

Compared at the stream's own numbers (the drawn items, the shock included):
* static: the map solved once from the prior scores, its cost weight set so that its average cost over
  the stream equals the target (a mix of the two maps either side of it, as a randomised map would);
* hindsight: the best fixed map for the stream's true scores at the adaptive run's average cost (the
  same construction, from the true per-category scores).
The report also says, to read a missed target: per window, the share of requests decided at cost weight
0 or below (the router spends all that buys quality, or more with ``weight_floor``; a window under the
target there is not a control error), and the shocked expert's share under the best fixed map for the
post-shock requests (what it keeps where it stays the best choice after the drop; recovery, as the issue
defines it, needs it below 10% of before).
No generation happens: a request's quality is the outcome score of the expert chosen for its item.
The fit and the replay run on one BLAS thread: the fitted models, and so every figure, change with
BLAS's thread count (the order of its float sums). They change with the CPU's BLAS kernel for the same
reason: the command line pins it before numpy loads (``coserve.bench.kernel``), the report names the
kernels that ran (``blas``), and the embeddings are cached per kernel.
This module knows nothing about HTTP or the serving path.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from coserve.bench import adapt_baselines as measures
from coserve.bench.adapt_baselines import category_means, lagrangian_mix, mix_of, mix_weights, recovery, share_of
from coserve.bench.adapt_fit import FOLDS_SEED, ONE_BLAS_THREAD, FittedStream, fit_stream, split_by_prompt
from coserve.bench.adapt_plot import plot_adapt
from coserve.bench.kernel import blas_kernels, kernel_cache
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.eval.data import (
    ExpertCosts,
    OnBad,
    OutcomeSet,
    check_foldable,
    embed_cached,
    load_costs,
    load_outcomes,
)
from coserve.router.drift_calibration import CellCalibration, PriorFit, calibration_from, cell_offsets, picks
from coserve.router.online import OnlineRouter
from coserve.router.online_shadow import MAX_SHARE, ShadowPick

logger = logging.getLogger(__name__)

__all__ = [
    "AdaptOptions", "FittedStream", "fit_stream", "lagrangian_mix", "plot_adapt", "prior_calibration", "replay_adapt",
    "run_adapt", "split_by_prompt",
]  # fmt: skip

SETTLE = 1000  # tracking error counts windows starting after this many requests
CALIBRATION_FOLDS = 5  # change_calibration: the prior's folds, each predicted by a predictor fitted on the rest


_ONLINE = OnlineSettings()  # router.online's defaults
_NEIGHBOURS = None if _ONLINE.neighbours is None else _ONLINE.neighbours.model_dump()


@dataclass(frozen=True)
class AdaptOptions:
    """The replay's knobs (defaults are the issue's)."""

    budget_axis: str = "params"
    target: float = 20.0
    requests: int = 12_000
    phases: int = 4
    feedback: float = 0.3
    noise: float = 0.1
    shock: float = 0.3
    window: int = 500
    seed: int = 0
    # the knobs below: router.online's, whose defaults scripts/adapt_tune.py chose on a split of the
    # prior half (docs/adapt.md); one source, coserve.config_routing.OnlineSettings
    prior_strength: float = _ONLINE.prior_strength
    max_count: float = _ONLINE.max_count
    step: float = _ONLINE.step
    explore_cap: float = _ONLINE.explore_cap
    change_threshold: float = _ONLINE.change_threshold  # the change detector's alarm level (0: no detector)
    change_drift: float = _ONLINE.change_drift
    reset_count: float = _ONLINE.reset_count
    move_mean: bool = _ONLINE.move_mean
    change_baseline: str = _ONLINE.change_baseline  # the detector's residuals: against the posterior or own feedback
    change_min_feedback: int = _ONLINE.change_min_feedback
    mix_window: int = _ONLINE.mix_window  # requests whose category mix sets the feed-forward weight (0: integral only)
    granularity: str = _ONLINE.granularity  # route per category, or per prompt (needs the stream's predictions)
    prompt_weight: float = _ONLINE.prompt_weight  # share of a prompt's predicted offset from its category kept
    expert_rate: float = _ONLINE.expert_rate  # the per-expert offset's learning rate (0: none)
    mix_jump: float = _ONLINE.mix_jump  # mix distance read as a jump: the short window sets the weight (0: never)
    mix_short: int = _ONLINE.mix_short
    refresh_on_alarm: bool = _ONLINE.refresh_on_alarm
    underspend_debt: float = _ONLINE.underspend_debt  # underspend at weight 0 carried and paid back (requests)
    fine_weight: float = _ONLINE.fine_weight  # below this effective weight the controller's step shrinks
    change_upward: bool = _ONLINE.change_upward  # an alarm of a rise also rebases the expert
    explore_at_zero: bool = _ONLINE.explore_at_zero  # requests decided at weight 0 explore beyond the cap
    weight_floor: float = _ONLINE.weight_floor  # the cost weight's floor is -weight_floor (two-sided target)
    alarm_explore: int = _ONLINE.alarm_explore  # requests after a downward alarm its expert may be explored
    alarm_explore_any_weight: bool = _ONLINE.alarm_explore_any_weight  # ... at any cost weight, not only <= 0
    alarm_explore_underspend: float = _ONLINE.alarm_explore_underspend  # ... only this share under the target
    change_shift_share: float = _ONLINE.change_shift_share  # share of the estimated shift an alarm moves means
    change_shift_pool: float = _ONLINE.change_shift_pool  # > 0: a drop's move per category, shrunk to the pooled one
    neighbours: dict[str, Any] | None = _NEIGHBOURS  # router.online.neighbours (NeighbourSettings' fields); None: off
    change_model: str = (
        _ONLINE.change_model
    )  # the detector's residuals alike (flat) or by expected score (proportional)
    change_variance_floor: float = _ONLINE.change_variance_floor  # proportional: > 0 weighs by the score's variance
    change_reference: str = _ONLINE.change_reference  # residuals tested as they are, or less a running mean
    change_reference_memory: float = _ONLINE.change_reference_memory  # running: the reference's memory (feedbacks)
    change_calibration: str = _ONLINE.change_calibration  # none, or the detector reads residuals less cell offsets
    change_calibration_shrink: float = _ONLINE.change_calibration_shrink  # the offsets' pseudo-counts
    change_anchor: bool = _ONLINE.change_anchor  # residuals against the estimate when the down side left 0
    change_fast_drift: float = _ONLINE.change_fast_drift  # the second, down-only CUSUM's drift
    change_fast_threshold: float = _ONLINE.change_fast_threshold  # its level (0: none)
    change_probe: float = _ONLINE.change_probe  # share of the alarm level above which an expert is probed (0: off)
    change_probe_requests: int = _ONLINE.change_probe_requests  # requests one suspicion episode may probe
    change_probe_margin: float = _ONLINE.change_probe_margin  # objective margin within which a request is probed
    change_probe_starved: float = _ONLINE.change_probe_starved  # probe only below this short/long traffic share ratio
    change_confirm: bool = _ONLINE.change_confirm  # a downward alarm re-tested before it sticks (online_confirm)
    change_confirm_requests: int = _ONLINE.change_confirm_requests  # requests one episode may route to the expert
    change_confirm_sd: float = _ONLINE.change_confirm_sd  # the test's residual sd
    change_confirm_error: float = _ONLINE.change_confirm_error  # the test's error rates (both)
    explore_policy: str = _ONLINE.explore_policy  # an exploration under the cap: Thompson's draw or kg (online_kg)
    kg_horizon: float = _ONLINE.kg_horizon  # kg: the requests one more observation's knowledge serves
    alarm_revert: int = _ONLINE.alarm_revert  # requests a downward move may starve its expert before half goes back
    alarm_revert_share: float = _ONLINE.alarm_revert_share  # the share of that move taken back
    kg_settle: int = _ONLINE.kg_settle  # kg: requests after a downward alarm its expert earns no bonus (0: off)
    # the replay's own (not router.online's: the server has no judge): share of requests also answered and judged
    # in the shadow by a second expert (coserve.router.online_shadow); it changes the benchmark's information
    shadow: float = 0.0
    shadow_charged: bool = True  # false: a shadow's cost is counted nowhere (a diagnostic: the information's worth)
    shadow_detected: bool = True  # false: a shadow's score teaches the posterior, not the change detector

    def __post_init__(self) -> None:
        if self.budget_axis not in ("params", "price"):
            raise ConfigError(f"budget axis must be params or price, not {self.budget_axis!r}")
        counts = {"target (the budget)": self.target, "requests": self.requests, "phases": self.phases}
        for name, value in {**counts, "window": self.window}.items():
            if not 0 < value < math.inf:
                raise ConfigError(f"{name} {value}: must be {'finite' if value == math.inf else 'positive'}")
        if self.seed < 0:  # numpy's generators take none
            raise ConfigError(f"seed {self.seed}: must be >= 0")
        noise_ok = 0 <= self.noise < math.inf
        if not (0 <= self.feedback <= 1 and 0 <= self.shock <= 1 and noise_ok and 0 <= self.explore_cap <= 1):
            raise ConfigError("feedback, shock and explore_cap must be in [0, 1] and noise >= 0 (finite)")
        if self.prior_strength <= 0 or self.max_count < self.prior_strength or self.step <= 0:
            raise ConfigError("prior_strength and step must be > 0 and max_count >= prior_strength")
        if self.change_threshold < 0 or self.change_drift < 0 or self.reset_count <= 0 or self.mix_window < 0:
            raise ConfigError("change_threshold, change_drift and mix_window must be >= 0 and reset_count > 0")
        if not 0 <= self.shadow <= MAX_SHARE:
            raise ConfigError(f"shadow {self.shadow}: must be in [0, {MAX_SHARE}]")
        if self.granularity not in ("category", "prompt"):
            raise ConfigError(f"granularity must be category or prompt, not {self.granularity!r}")
        try:  # every other knob as router.online checks it (one line naming the knob, not a traceback)
            self.online()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    def online(self) -> OnlineSettings:
        """The online router's knobs as the server's ``router.online`` would carry them (every field of
        ``OnlineSettings`` these options name the same, ``window`` included; the rest at its defaults)."""
        fields = OnlineSettings.model_fields
        named = {name: getattr(self, name) for name in fields if hasattr(self, name)}
        # only what differs from router.online's defaults is set (a default calibration is inert where it cannot act)
        return OnlineSettings(**{name: value for name, value in named.items() if value != fields[name].default})


def _draw_stream(labels: np.ndarray, options: AdaptOptions, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Item index per request, and each phase's category mix."""
    classes = np.unique(labels)
    per_phase = -(-options.requests // options.phases)
    items: list[np.ndarray] = []
    mixes = []
    for phase in range(options.phases):
        mix = rng.dirichlet(np.full(len(classes), 0.7))
        size = min(per_phase, options.requests - phase * per_phase)
        chosen = rng.choice(len(classes), size=size, p=mix)
        members = [np.flatnonzero(labels == c) for c in classes]
        items.append(np.array([rng.choice(members[c]) for c in chosen], dtype=np.int64))
        mixes.append({str(c): round(float(m), 4) for c, m in zip(classes, mix, strict=True)})
    return np.concatenate(items), mixes


@ONE_BLAS_THREAD
def replay_adapt(
    offline: np.ndarray,
    stream: OutcomeSet,
    stream_category: np.ndarray,
    costs: ExpertCosts,
    options: AdaptOptions,
    predicted: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    prior_fit: PriorFit | None = None,
) -> dict[str, Any]:
    """Replay ``stream`` through an online router started from ``offline`` [K, E]; the report as a dict.

    ``stream_category`` is the router's category index for each stream item; ``predicted`` [items, E]
    the offline per-prompt score of each expert on each stream item (needed in prompt mode); ``vectors``
    [items, dim] the predictor's vector of each item (needed with ``neighbours``); ``prior_fit`` the prior's
    out-of-fold predictions (needed with ``change_calibration``: ``fit_stream``'s ``folds``).
    """
    settings = options.online()
    if settings.calibrates and prior_fit is None:  # a prior of one category: no cross-fit (fit_stream)
        logger.warning("change_calibration: no out-of-fold predictions of the prior: residuals read uncalibrated")
    if options.neighbours is not None and vectors is None:
        raise ConfigError("neighbours need the stream's prompt vectors")
    if options.granularity == "prompt" and predicted is None:
        raise ConfigError("granularity prompt needs the offline per-prompt predictions of the stream")
    costs = costs.aligned(stream.experts)
    cost = costs.params_b if options.budget_axis == "params" else costs.price
    if not np.isfinite(cost).all():
        raise ValueError(f"the experts file lacks {options.budget_axis} for some experts")
    rng = np.random.default_rng(options.seed)
    items, mixes = _draw_stream(np.asarray(stream.categories), options, rng)
    n, K = len(items), offline.shape[0]
    truth = np.nan_to_num(np.asarray(stream.scores, dtype=np.float64)[items], nan=0.0)  # [n, E]
    category = np.asarray(stream_category)[items]
    shock_at = n // 2

    static = lagrangian_mix(offline, category_means(truth, category, K), mix_of(category, K), cost, options.target)
    share = np.zeros(len(cost))
    for weight, assignment in zip(mix_weights(static), static["maps"], strict=True):
        share += weight * np.bincount(np.asarray(assignment)[category], minlength=len(cost)) / n
    shocked = int(np.argmax(share))
    after = np.arange(n) >= shock_at
    truth[after, shocked] = np.clip(truth[after, shocked] - options.shock, 0.0, 1.0)
    static = lagrangian_mix(offline, category_means(truth, category, K), mix_of(category, K), cost, options.target)

    router = OnlineRouter.from_settings(offline, cost, options.target, settings, seed=options.seed)
    if settings.calibrates and prior_fit is not None:
        router.calibration = prior_calibration(prior_fit, cost, options, K, offline)
    if options.shadow > 0:
        router.shadow = ShadowPick(options.shadow, options.seed, options.shadow_detected)
    judge = np.random.default_rng([options.seed, 22])  # the shadow answers' noise: the stream's draws stay as they were
    chosen = np.zeros(n, dtype=np.int64)
    shadows = np.full(n, -1, dtype=np.int64)  # the shadow expert per request (-1: none)
    explored = np.zeros(n, dtype=bool)
    at_zero = np.zeros(n, dtype=bool)  # the weight at 0 (or below): the router spends all that buys quality
    for i in range(n):
        row = None if predicted is None else predicted[items[i]]
        vector = None if vectors is None else vectors[items[i]]
        decision = router.choose(int(category[i]), predicted=row, vector=vector)
        chosen[i], explored[i] = decision.expert, decision.explored
        at_zero[i] = router.snapshot.weight <= 0.0
        shadow = router.shadow_for(int(category[i]), decision.expert, predicted=row)
        router.served(decision.expert, shadow=shadow if options.shadow_charged else None)
        if rng.random() < options.feedback:
            observed = float(np.clip(truth[i, decision.expert] + rng.normal(0.0, options.noise), 0.0, 1.0))
            guess = None if row is None else float(row[decision.expert])
            router.feedback(int(category[i]), decision.expert, observed, predicted=guess, vector=vector)
        if shadow is not None:  # judged, always: its true score plus the replay's noise
            shadows[i] = shadow
            judged = float(np.clip(truth[i, shadow] + judge.normal(0.0, options.noise), 0.0, 1.0))
            guess = None if row is None else float(row[shadow])
            router.feedback(int(category[i]), shadow, judged, predicted=guess, vector=vector, shadow=True)
    shadow_cost = np.where(shadows >= 0, cost[np.maximum(shadows, 0)], 0.0)
    served_cost = cost[chosen] + (shadow_cost if options.shadow_charged else 0.0)  # what the budget pays
    served_quality = truth[np.arange(n), chosen]
    realised = float(served_cost.mean())
    hindsight_table = category_means(truth, category, K)
    hindsight = lagrangian_mix(hindsight_table, hindsight_table, mix_of(category, K), cost, realised)
    windows = measures.per_window(served_cost, served_quality, explored, at_zero, options.window, options.target)
    post = np.arange(n) >= shock_at
    best_after = lagrangian_mix(
        category_means(truth[post], category[post], K), category_means(truth[post], category[post], K),
        mix_of(category[post], K), cost, options.target,
    )  # fmt: skip
    settled = [w for w in windows if w["start"] >= SETTLE]
    before = float(np.mean(chosen[max(0, shock_at - options.window) : shock_at] == shocked))
    kept_after = share_of(best_after, category[post], shocked)
    alarms = measures.alarm_report(router.alarm_log, list(stream.experts), shocked, shock_at)  # false or true
    measures.regained(chosen, alarms["alarms"], list(stream.experts), shock_at, options.window)
    return {
        "budget_axis": options.budget_axis,
        "target": options.target,
        "requests": n,
        "options": options.__dict__,
        "phases": mixes,
        "experts": list(stream.experts),
        "windows": windows,
        "tracking_error_max": max((w["tracking_error"] for w in settled), default=None),
        "realised_avg_cost": realised,
        "quality": {
            "adaptive": float(served_quality.mean()),
            "static": static["quality"],
            "static_avg_cost": static["cost"],
            "hindsight": hindsight["quality"],
            "hindsight_avg_cost": hindsight["cost"],
        },
        "shock": {
            "at": shock_at,
            "expert": stream.experts[shocked],
            "static_share": float(share[shocked]),
            # its share under the best fixed map for the post-shock requests' true scores, at the target:
            # what it keeps where it stays the best choice after the drop
            "best_share_after": kept_after,
            "share_before": before,
            # the recovery criterion (below 10% of share_before) asks the router to drop an expert that the
            # best fixed map for the post-shock scores still gives more than that: a miss it cannot avoid
            "best_map_keeps_it": measures.best_map_keeps(before, kept_after),
        },
        "recovery_requests": recovery(chosen, shocked, shock_at, options.window),
        "explored_share": float(explored.mean()),
        "shadow_share": float(np.mean(shadows >= 0)),  # requests also answered in the shadow
        "shadow_cost_share": float(shadow_cost.sum() / max(cost[chosen].sum() + shadow_cost.sum(), 1e-300)),
        "probed_share": router.probe.probed / n,  # requests routed to a suspect expert (change_probe)
        "confirm_share": router.confirm.routed / n,  # requests routed to re-test a downward alarm (change_confirm)
        "confirm_outcomes": dict(router.confirm.outcomes),  # episodes confirmed, reverted, expired
        "alarm_reverts": router.reverter.reverted,  # starved downward moves half taken back (alarm_revert)
        "map_versions": router.snapshot.version,
        "final_weight": router.controller.effective,
        "change_alarms": router.alarms,
        **({} if router.calibration is None else {"calibration_offsets": router.calibration.offset.tolist()}),
        **alarms,
    }


def prior_calibration(
    prior_fit: PriorFit, cost: np.ndarray, options: AdaptOptions, categories: int, offline: np.ndarray | None = None
) -> CellCalibration:
    """The detector's cell offsets for this budget, from the prior's out-of-fold predictions (drift_calibration);
    with ``offline`` [K, E] as the detector reads residuals, without it in prediction units (routing's)."""
    fading = options.change_calibration == "fading"
    shrink, floor = options.change_calibration_shrink, options.weight_floor
    if offline is not None:
        return calibration_from(prior_fit, cost, options.target, floor, shrink, offline, fading)
    chosen = picks(prior_fit.predicted, cost, options.target, floor)
    offsets = cell_offsets(prior_fit.truth, prior_fit.predicted, prior_fit.category, chosen, categories, shrink)
    return CellCalibration(offsets.offset, fading=fading)


def run_adapt(
    prior_path: str | Path,
    stream_path: str | Path | None,
    experts_path: str | Path,
    options: AdaptOptions,
    embedder: Any,
    predictor_embedder: Any | None = None,
    on_bad: OnBad = "refuse",
) -> dict[str, Any]:
    """Fit on the prior file (or one half of it when ``stream_path`` is None), replay the stream; the
    per-prompt predictor reads ``predictor_embedder``'s vectors where one is given (else ``embedder``'s).
    Bad rows of either file are refused (one error listing them), or with ``on_bad`` "skip" left out with
    a warning each, as ``coserve train`` and ``eval`` do."""
    costs = load_costs(experts_path)
    prior, skipped = load_outcomes(prior_path, on_bad=on_bad)
    costs.aligned(prior.experts, scored_in=str(prior_path))  # refused now, not after minutes of embedding
    fitted_on = prior.subset(split_by_prompt(prior)[0]) if stream_path is None else prior
    if len(set(fitted_on.categories)) > 1:  # one category: a per-category table, nothing is tuned
        cross = CALIBRATION_FOLDS if options.online().calibrates else None
        where = f"{prior_path} (the half the router is fitted on)" if stream_path is None else str(prior_path)
        check_foldable(where, fitted_on.prompts, cross, FOLDS_SEED, "give more rows")  # said now, naming the file
    pred = predictor_embedder or embedder
    kernels = blas_kernels()
    cache = kernel_cache(kernels)
    X_prior = embed_cached(prior.prompts, embedder, cache)  # the whole file, then split
    P_prior = X_prior if pred is embedder else embed_cached(prior.prompts, pred, cache)
    if stream_path is None:
        fit_rows, stream_rows = split_by_prompt(prior)
        stream, X_stream, P_stream = prior.subset(stream_rows), X_prior[stream_rows], P_prior[stream_rows]
        prior, X_prior, P_prior = prior.subset(fit_rows), X_prior[fit_rows], P_prior[fit_rows]
    else:
        stream, more = load_outcomes(stream_path, experts=prior.experts, on_bad=on_bad)
        skipped += more
        X_stream = embed_cached(stream.prompts, embedder, cache)
        P_stream = X_stream if pred is embedder else embed_cached(stream.prompts, pred, cache)
    folds = CALIBRATION_FOLDS if options.online().calibrates else 0
    fitted = fit_stream(prior, X_prior, stream, X_stream, costs, options.budget_axis, (P_prior, P_stream), folds)
    report = replay_adapt(
        fitted.offline, stream, fitted.stream_category, costs, options, fitted.predicted, fitted.vectors,
        fitted.prior_fit,
    )  # fmt: skip
    report.update(prior=str(prior_path), stream=str(stream_path or f"{prior_path} (other half)"))
    report.update(prior_rows=len(prior), stream_rows=len(stream), categories=fitted.categories)
    report.update(embedder=embedder.name, predictor_embedder=pred.name, blas=kernels)
    for problem in skipped:  # bad rows are left out, never silently
        logger.warning("skipped %s", problem)
    return report
