"""The budget optimiser: which expert serves each category (or each prompt) under an average-cost budget.

* ``solve_map`` picks one expert per category to maximise expected quality ``sum_k p_k S[k, e]``
  subject to the expected cost ``sum_k p_k cost[e] <= budget``: a small binary program solved
  with HiGHS (``scipy.optimize.milp``).
* ``pareto`` sweeps budgets and keeps the non-dominated maps (the quality/cost frontier).
* ``choose_per_prompt`` and ``lambda_for_budget`` do the same per prompt with a Lagrange price on
  cost: argmax ``score - lam * cost``, with the smallest ``lam`` that meets the budget.

Ties always go to the cheaper expert: equal quality never justifies more cost, so the map does not
collapse onto the biggest expert. Pure functions of numbers; this module knows nothing about
embeddings, classifiers or the library file. Costs are in any one unit (USD, billions of params).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coserve.errors import InfeasibleConstraints

__all__ = ["MapPoint", "choose_per_prompt", "lambda_for_budget", "pareto", "solve_map"]

# The MILP's tie-break: the objective is quality - TIE_EPS * (expected cost / max cost). The term is
# at most TIE_EPS = 1e-7 of a score in [0, 1], so it decides only between maps whose expected quality
# differs by less than that (far below any measured difference). The objective is multiplied by
# SCALE so that HiGHS's absolute MIP gap (1e-6, not settable through scipy) is 1e-12 of quality,
# well below TIE_EPS: the solver does resolve the tie-break. The relative gap is set to 0.
TIE_EPS = 1e-7
SCALE = 1e6
SCORE_TIE = 1e-12  # scores closer than this are equal (per-category tie pass, per-prompt choice)


@dataclass(frozen=True)
class MapPoint:
    """One category -> expert map on the quality/cost frontier."""

    budget: float  # the budget this map was solved for (cost units)
    quality: float  # expected score, sum_k p_k S[k, assignment[k]]
    avg_cost: float  # expected cost per request, sum_k p_k cost[assignment[k]]
    assignment: tuple[int, ...]  # expert index per category


def _inputs(p: np.ndarray, S: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 copies with ``p`` normalised; shapes checked."""
    p = np.asarray(p, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    if S.ndim != 2 or S.shape != (len(p), len(cost)):
        raise ValueError(f"S must be [K={len(p)}, E={len(cost)}], got {S.shape}")
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError("category weights p must be non-negative with a positive sum")
    return p / p.sum(), S, cost


def _check_budget(cost: np.ndarray, budget: float) -> None:
    """Raise InfeasibleConstraints when even the cheapest expert everywhere costs more than ``budget``."""
    cheapest = float(cost.min())
    if budget < cheapest - 1e-12 * max(1.0, abs(cheapest)):
        raise InfeasibleConstraints(
            f"budget {budget:g} is below the cheapest possible average cost; the minimum feasible budget is "
            f"{cheapest:g}",
            param="budget",
        )


def _prefer_cheaper(p: np.ndarray, S: np.ndarray, cost: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Move each category to the cheapest expert scoring at least as well (never costs quality or budget)."""
    out = assignment.copy()
    for k, e in enumerate(assignment):
        # A category with no weight spends nothing: give it its best expert, cheapest among equals.
        floor = S[k].max() if p[k] == 0 else S[k, e]
        candidates = np.flatnonzero(S[k] >= floor - SCORE_TIE)
        out[k] = candidates[np.lexsort((candidates, cost[candidates]))[0]]
    return out


def solve_map(p: np.ndarray, S: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Expert index per category maximising expected quality with expected cost <= budget (MILP, HiGHS)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    p, S, cost = _inputs(p, S, cost)
    _check_budget(cost, budget)
    K, E = S.shape
    scale = max(float(np.abs(cost).max()), 1e-300)  # costs enter the solver in units of the largest
    objective = -SCALE * (p[:, None] * (S - TIE_EPS * cost[None, :] / scale)).ravel()  # x[k, e] at k*E + e
    one_each = np.kron(np.eye(K), np.ones((1, E)))  # sum_e x[k, e] = 1
    spend = (p[:, None] * cost[None, :] / scale).ravel()[None, :]
    limit = budget / scale
    assignment = np.argmin(cost) * np.ones(K, dtype=np.int64)  # always feasible after _check_budget
    for _ in range(5):  # HiGHS allows a 1e-7 feasibility slack: tighten and re-solve if it used it
        result = milp(
            objective,
            integrality=np.ones(K * E),
            bounds=Bounds(0, 1),
            constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(spend, -np.inf, limit)],
            options={"mip_rel_gap": 0.0},
        )
        if result.x is None:
            break  # only a tightened limit can get here; the cheapest-everywhere map stands
        candidate = result.x.reshape(K, E).argmax(axis=1)
        overspend = float(p @ cost[candidate]) - budget
        if overspend <= 1e-12 * scale:
            assignment = candidate
            break
        limit -= overspend / scale + 1e-9
    return _prefer_cheaper(p, S, cost, assignment)


def _quality_cost(p: np.ndarray, S: np.ndarray, cost: np.ndarray, assignment: np.ndarray) -> tuple[float, float]:
    return float(p @ S[np.arange(len(p)), assignment]), float(p @ cost[assignment])


def pareto(p: np.ndarray, S: np.ndarray, cost: np.ndarray, budgets: np.ndarray | None = None) -> list[MapPoint]:
    """Non-dominated maps over a sweep of budgets, sorted by expected cost (infeasible budgets skipped)."""
    p, S, cost = _inputs(p, S, cost)
    unconstrained = _prefer_cheaper(p, S, cost, S.argmax(axis=1))
    if budgets is None:
        low, high = float(cost.min()), float(cost.max())
        if low > 0 and high / low > 10:
            sweep = np.geomspace(low, high, 40)
        else:
            sweep = np.linspace(low, high, 40)
        budgets = np.append(sweep, _quality_cost(p, S, cost, unconstrained)[1])
    points: list[MapPoint] = []
    for budget in sorted(float(b) for b in budgets):
        if budget < cost.min():
            continue
        assignment = solve_map(p, S, cost, budget)
        quality, avg_cost = _quality_cost(p, S, cost, assignment)
        points.append(MapPoint(budget, quality, avg_cost, tuple(int(e) for e in assignment)))
    points.sort(key=lambda m: (m.avg_cost, -m.quality, m.budget))
    frontier: list[MapPoint] = []
    for point in points:  # cheapest first: keep a point only if it beats every cheaper one on quality
        if not frontier or point.quality > frontier[-1].quality + SCORE_TIE:
            if frontier and point.avg_cost <= frontier[-1].avg_cost + 1e-12 * max(1.0, abs(point.avg_cost)):
                frontier.pop()  # same cost, better quality: the earlier one is dominated
            frontier.append(point)
    return frontier


def choose_per_prompt(scores: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Per prompt, the expert maximising ``score - lam * cost``; ties go to the cheaper expert."""
    scores = np.asarray(scores, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    utility = scores - lam * cost[None, :]
    best = utility.max(axis=1, keepdims=True)
    tied = utility >= best - SCORE_TIE * (1.0 + np.abs(best))
    return np.argmin(np.where(tied, cost[None, :], np.inf), axis=1).astype(np.int64)


def lambda_for_budget(scores: np.ndarray, cost: np.ndarray, budget: float, iters: int = 60) -> float:
    """Smallest price ``lam >= 0`` whose per-prompt choices have mean cost <= budget (bisection)."""
    cost = np.asarray(cost, dtype=np.float64)
    _check_budget(cost, budget)

    def spend(lam: float) -> float:
        return float(cost[choose_per_prompt(scores, cost, lam)].mean())

    if spend(0.0) <= budget:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(1100):  # large enough a price makes the cheapest expert win everywhere
        if spend(high) <= budget:
            break
        low, high = high, high * 2
    for _ in range(iters):
        middle = 0.5 * (low + high)
        if spend(middle) <= budget:
            high = middle
        else:
            low = middle
    return high
