"""The budget optimiser against brute force, its tie rule, its frontier and the per-prompt price."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from coserve.errors import InfeasibleConstraints
from coserve.router.mapping import choose_per_prompt, lambda_for_budget, pareto, solve_map


def instance(seed: int, K: int, E: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(K)) * 7, rng.random((K, E)), rng.uniform(0.1, 10.0, size=E)


def all_maps(p: np.ndarray, S: np.ndarray, cost: np.ndarray) -> list[tuple[float, float, tuple[int, ...]]]:
    """(quality, avg_cost, assignment) of every one of the E^K maps (p normalised)."""
    p = p / p.sum()
    K, E = S.shape
    out = []
    for a in itertools.product(range(E), repeat=K):
        out.append((float(p @ S[np.arange(K), a]), float(p @ cost[list(a)]), a))
    return out


def evaluate(p: np.ndarray, S: np.ndarray, cost: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    p = p / p.sum()
    return float(p @ S[np.arange(len(p)), a]), float(p @ cost[a])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("K", "E"), [(1, 3), (2, 2), (3, 3), (4, 4), (4, 2)])
def test_solve_map_matches_brute_force(seed: int, K: int, E: int) -> None:
    p, S, cost = instance(seed, K, E)
    maps = all_maps(p, S, cost)
    costs = sorted(c for _, c, _ in maps)
    budgets = [cost.min(), *np.quantile(costs, [0.1, 0.3, 0.5, 0.8]), costs[len(costs) // 2], cost.max() + 1]
    for budget in budgets:
        a = solve_map(p, S, cost, float(budget))
        assert a.shape == (K,) and a.dtype.kind == "i"
        quality, spent = evaluate(p, S, cost, a)
        assert spent <= budget + 1e-9
        best = max(q for q, c, _ in maps if c <= budget + 1e-12)
        assert quality == pytest.approx(best, abs=1e-7)


def test_solve_map_ties_go_to_the_cheaper_expert() -> None:
    S = np.array([[0.8, 0.8, 0.3], [0.5, 0.9, 0.9], [0.7, 0.7, 0.7]])
    p = np.array([1.0, 1.0, 1.0])
    # Expert 0 is the biggest and dearest; equal quality must never buy it.
    assert solve_map(p, S, np.array([5.0, 1.0, 0.5]), budget=100).tolist() == [1, 2, 2]
    assert solve_map(p, S, np.array([1.0, 5.0, 6.0]), budget=100).tolist() == [0, 1, 0]
    assert solve_map(p, S, np.array([2.0, 3.0, 1.0]), budget=100).tolist() == [0, 2, 2]


def test_solve_map_normalises_p_and_spends_the_budget_well() -> None:
    S = np.array([[0.9, 0.2], [0.4, 0.35]])
    cost = np.array([10.0, 1.0])
    p = np.array([3.0, 1.0])  # 75% / 25%
    # Budget 7.75 pays for the dear expert on the 75% category only (0.75 * 10 + 0.25 * 1).
    assert solve_map(p, S, cost, 7.75).tolist() == [0, 1]
    assert solve_map(p * 100, S, cost, 7.75).tolist() == [0, 1]
    assert solve_map(p, S, cost, 7.7).tolist() == [1, 0]  # 3.25: the dear expert on the 25% only
    assert solve_map(p, S, cost, 3.0).tolist() == [1, 1]
    assert solve_map(p, S, cost, 10.0).tolist() == [0, 0]


def test_solve_map_infeasible_budget_names_the_minimum() -> None:
    S = np.array([[0.5, 0.9]])
    with pytest.raises(InfeasibleConstraints, match=r"minimum feasible budget is 2\b") as info:
        solve_map(np.array([1.0]), S, np.array([2.0, 3.0]), budget=1.5)
    assert info.value.param == "budget"
    assert solve_map(np.array([1.0]), S, np.array([2.0, 3.0]), budget=2.0).tolist() == [0]


@pytest.mark.parametrize("seed", range(4))
def test_pareto_points_are_on_the_true_frontier(seed: int) -> None:
    p, S, cost = instance(seed, 4, 3)
    maps = all_maps(p, S, cost)
    points = pareto(p, S, cost)
    assert len(points) >= 2
    for before, after in itertools.pairwise(points):
        assert after.avg_cost > before.avg_cost and after.quality > before.quality
    for point in points:
        assert point.avg_cost <= point.budget + 1e-9
        assert (point.quality, point.avg_cost) == pytest.approx(evaluate(p, S, cost, np.array(point.assignment)))
        # Nothing at most as dear is better.
        assert not any(q > point.quality + 1e-9 and c <= point.avg_cost + 1e-12 for q, c, _ in maps)
    assert points[-1].quality == pytest.approx(max(q for q, _, _ in maps))
    assert points[0].avg_cost == pytest.approx(cost.min())


def test_pareto_with_explicit_budgets_skips_infeasible_ones() -> None:
    p, S, cost = instance(1, 3, 3)
    points = pareto(p, S, cost, budgets=np.array([cost.min() / 2, cost.max()]))
    assert len(points) == 1 and points[0].budget == pytest.approx(cost.max())


def test_choose_per_prompt_prices_cost_and_breaks_ties_cheaply() -> None:
    scores = np.array([[0.9, 0.9, 0.1], [0.2, 0.6, 0.7]])
    cost = np.array([3.0, 1.0, 2.0])
    assert choose_per_prompt(scores, cost, 0.0).tolist() == [1, 2]
    assert choose_per_prompt(scores, cost, 0.2).tolist() == [1, 1]
    assert choose_per_prompt(scores, cost, 100.0).tolist() == [1, 1]


@pytest.mark.parametrize("budget", [0.3, 1.0, 2.0, 3.0])
def test_lambda_for_budget_is_the_smallest_price_that_fits(budget: float) -> None:
    rng = np.random.default_rng(7)
    scores = rng.random((300, 4))
    cost = np.array([0.1, 1.0, 3.0, 10.0])

    def spend(lam: float) -> float:
        return float(cost[choose_per_prompt(scores, cost, lam)].mean())

    assert spend(0.0) > budget
    lam = lambda_for_budget(scores, cost, budget)
    assert lam > 0
    assert spend(lam) <= budget
    assert spend(lam - 1e-9) > budget


def test_lambda_for_budget_free_and_infeasible() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    cost = np.array([1.0, 2.0])
    assert lambda_for_budget(scores, cost, 2.0) == 0.0
    with pytest.raises(InfeasibleConstraints, match="minimum feasible budget is 1"):
        lambda_for_budget(scores, cost, 0.5)
