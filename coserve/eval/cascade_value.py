"""Per-category cascade plans with a value gate, replayed on outcome rows and chosen by a price on parameters.

A plan gives each routed category a ``CategoryRule``; a category without one answers by single choice.
For one row the rule's ladder (coserve.engine.cascade.cascade_rungs from its start) is walked so:

    value gate -> with ``value_margin``: when P(next rung good | prompt) - P(start good | prompt) (two
                  prompt gates, coserve.router.gate) is below the margin, the start answers alone,
                  one step: asking the next rung is not expected to be worth its parameters
    start gate -> with ``start_limit``: P(start good | prompt) below it skips the start
    check      -> each answer's P(good) (the answer check) at or above ``threshold`` is returned;
                  else the next rung answers, up to ``max_steps`` experts

``choose_for_target`` picks the rules of every category together, for the largest margin by which
the plan meets a target of the form "+``gain`` points at no more parameters, or as good at <=
``share`` of them". ``choose_rules`` picks, per category, the rule of a grid with the most quality less ``price`` times
mean active parameters on rows whose probabilities are out of fold: the price of a billion active
parameters in quality, so the choice trades the two as the caller prices them. Quality and
parameters count every expert asked. This module knows nothing about HTTP or the engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from coserve.config import LibraryConfig
from coserve.engine.cascade import cascade_rungs, params_of
from coserve.router.policy import decide

__all__ = [
    "CategoryRule",
    "Probabilities",
    "choose_for_target",
    "choose_rules",
    "plan_replay",
    "rule_grid",
    "target_margin",
]


@dataclass(frozen=True)
class CategoryRule:
    """How one routed category answers: a cascade from ``start`` (None: single choice)."""

    start: str | None  # the first rung; None: the library's single choice, one step, unchecked
    threshold: float = 0.5  # the check's P(good) at or above this returns the answer
    start_limit: float | None = None  # P(start good | prompt) below this skips the start; None: no start gate
    value_margin: float | None = None  # P(next good) - P(start good) below this: the start alone; None: off

    def state(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Probabilities:
    """What a plan reads per row: the check's P(good) per (item, expert) and each gate's P(good) per item."""

    check: Mapping[tuple[str, str], float]
    gates: Mapping[str, Mapping[str, float]]  # expert -> item id -> P(that expert is good | prompt)


def _asked(rungs: Sequence[str], item: str, rule: CategoryRule, p: Probabilities, max_steps: int) -> list[str]:
    """The experts asked for one item on ``rungs`` under ``rule``."""
    rungs = list(rungs)
    if len(rungs) > 1 and rule.value_margin is not None:
        gain = p.gates[rungs[1]][item] - p.gates[rungs[0]][item]
        if gain < rule.value_margin:
            return rungs[:1]
    if len(rungs) > 1 and rule.start_limit is not None and p.gates[rungs[0]][item] < rule.start_limit:
        rungs = rungs[1:]
    asked: list[str] = []
    for expert in rungs:
        asked.append(expert)
        if len(asked) >= max_steps or p.check[(item, expert)] >= rule.threshold:
            break
    return asked


def plan_replay(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig,
    rules: Mapping[str, CategoryRule],
    p: Probabilities,
    max_steps: int = 3,
) -> dict[str, Any]:
    """The plan ``rules`` and single choice on ``rows`` (every expert scored, router probabilities
    recorded): quality and mean active parameters of each, per-item results, steps taken."""
    params = params_of(library)
    per_item: dict[str, tuple[float, float]] = {}
    single: dict[str, tuple[float, float]] = {}
    steps: dict[str, int] = {}
    for row in rows:
        item, scores = str(row["id"]), row["scores"]
        decision = decide(row["router"]["probabilities"], library)
        single[item] = (float(scores[decision.expert]), params[decision.expert])
        rule = rules.get(decision.category or "")
        if rule is None or rule.start is None:
            per_item[item], steps[item] = single[item], 1
            continue
        asked = _asked(cascade_rungs(decision, params, {decision.category or "": rule.start}), item, rule, p, max_steps)
        per_item[item], steps[item] = (float(scores[asked[-1]]), sum(params[e] for e in asked)), len(asked)
    return {
        "plan": summary(per_item),
        "single": summary(single),
        "per_item": per_item,
        "single_per_item": single,
        "steps": steps,
    }


def summary(per_item: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Quality and mean active parameters (B) over the items of ``per_item``."""
    values = np.array(list(per_item.values()), dtype=float).reshape(-1, 2)
    return {
        "items": len(values),
        "quality": round(float(values[:, 0].mean()), 4),
        "avg_params_b": round(float(values[:, 1].mean()), 4),
    }


def _by_category(rows: Sequence[Mapping[str, Any]], library: LibraryConfig) -> dict[str, list[Mapping[str, Any]]]:
    """``rows`` by the category the library's router assigns them."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(decide(row["router"]["probabilities"], library).category or "", []).append(row)
    return groups


def _sums(replayed: Mapping[str, Any]) -> np.ndarray:
    """[sum of quality, sum of parameters (B)] over a replay's items."""
    return np.array(list(replayed["per_item"].values()), dtype=float).reshape(-1, 2).sum(axis=0)


def rule_grid(
    start: str,
    break_even: float,
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    margins: Sequence[float | None] = (None, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
) -> list[CategoryRule]:
    """Single choice, and cascades from ``start`` at each threshold, start gate (off, break-even) and margin."""
    grid = [CategoryRule(None)]
    for threshold, limit, margin in itertools.product(thresholds, (None, break_even), margins):
        grid.append(CategoryRule(start, threshold, limit, margin))
    return grid


def target_margin(points: float, ratio: float, gain: float = 3.0, share: float = 0.8) -> float:
    """By how many points a plan ``points`` above single choice at ``ratio`` of its parameters meets
    "+``gain`` points at ratio <= 1, or >= 0 points at ratio <= ``share``" (negative: misses it);
    parameters are turned into points at the target's own rate, ``gain`` points per 1 - ``share``."""
    rate = gain / (1 - share)  # points per unit of the parameter ratio: 3 / 0.2 = 15
    return max(min(points - gain, rate * (1 - ratio)), min(points, rate * (share - ratio)))


def choose_for_target(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig,
    grid: Sequence[CategoryRule],
    p: Probabilities,
    max_steps: int = 3,
    min_items: int = 5,
) -> dict[str, CategoryRule]:
    """The rules of ``grid``, one per routed category with at least ``min_items`` rows (others: single
    choice), whose combination on ``rows`` has the largest ``target_margin`` against single choice."""
    groups = _by_category(rows, library)
    single = plan_replay(rows, library, {}, p, max_steps)["single"]
    n = len(rows)
    base = np.zeros(2)  # sum quality, sum params of the categories left to single choice
    totals: dict[str, list[np.ndarray]] = {}  # category -> per rule of the grid: the same sums
    for category, group in groups.items():
        if len(group) < min_items:
            base += _sums(plan_replay(group, library, {}, p, max_steps))
        else:
            totals[category] = [_sums(plan_replay(group, library, {category: r}, p, max_steps)) for r in grid]
    best: tuple[int, ...] = ()
    best_margin = -np.inf
    names = sorted(totals)
    for combo in itertools.product(*(range(len(grid)) for _ in names)):
        q, b = base + sum((totals[c][i] for c, i in zip(names, combo, strict=True)), np.zeros(2))
        margin = target_margin(100 * (q / n - single["quality"]), (b / n) / single["avg_params_b"])
        if margin > best_margin + 1e-9:
            best, best_margin = combo, margin
    return {c: grid[i] for c, i in zip(names, best, strict=True)}


def choose_rules(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig,
    grid: Sequence[CategoryRule],
    p: Probabilities,
    price: float,
    max_steps: int = 3,
) -> dict[str, CategoryRule]:
    """Per routed category of ``rows``, the rule of ``grid`` with the most sum(quality) - ``price`` *
    sum(params) (B) on them, ties to the earlier rule (single choice first)."""
    categories = _by_category(rows, library)
    chosen: dict[str, CategoryRule] = {}
    for category, group in sorted(categories.items()):
        best, best_value = grid[0], -np.inf
        for rule in grid:
            quality, params = _sums(plan_replay(group, library, {category: rule}, p, max_steps))
            value = quality - price * params
            if value > best_value + 1e-9:
                best, best_value = rule, value
        chosen[category] = best
    return chosen
