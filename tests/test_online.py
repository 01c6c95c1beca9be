"""The online router: posterior arithmetic, bounded exploration, the budget controller, versioned swaps."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from coserve.router.online import BudgetController, OnlineRouter, ScorePosterior, solve_weighted


def test_posterior_starts_from_offline_scores_and_adds_fractional_outcomes() -> None:
    post = ScorePosterior(np.array([[0.6, 0.2]]), prior_strength=10, max_count=100)
    assert post.alpha[0] == pytest.approx([6.0, 2.0], abs=1e-5)
    assert post.beta[0] == pytest.approx([4.0, 8.0], abs=1e-5)
    post.update(0, 0, 1.0)  # alpha 7, beta 4
    assert post.mean()[0, 0] == pytest.approx(7 / 11, abs=1e-6)
    post.update(0, 0, 0.25)  # alpha 7.25, beta 4.75
    assert post.mean()[0, 0] == pytest.approx(7.25 / 12, abs=1e-6)
    assert post.count()[0, 0] == pytest.approx(12, abs=1e-5)
    assert post.mean()[0, 1] == pytest.approx(0.2, abs=1e-6)  # another cell is untouched


def test_posterior_caps_its_counts_so_old_evidence_fades() -> None:
    post = ScorePosterior(np.array([[0.6]]), prior_strength=10, max_count=12)
    post.update(0, 0, 1.0)  # 7 / 4, total 11
    post.update(0, 0, 1.0)  # 8 / 4, total 12: at the cap, kept
    post.update(0, 0, 1.0)  # 9 / 4, total 13 -> scaled by 12/13
    assert post.alpha[0, 0] == pytest.approx(9 * 12 / 13, abs=1e-5)
    assert post.beta[0, 0] == pytest.approx(4 * 12 / 13, abs=1e-5)
    assert post.mean()[0, 0] == pytest.approx(9 / 13, abs=1e-6)


@pytest.mark.parametrize("score", [-0.1, 1.5])
def test_posterior_refuses_a_score_out_of_range(score: float) -> None:
    post = ScorePosterior(np.array([[0.6]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        post.update(0, 0, score)
    assert post.mean()[0, 0] == pytest.approx(0.6, abs=1e-6)


def test_controller_moves_the_weight_by_the_relative_overspend() -> None:
    ctl = BudgetController(target=10, step=0.1)
    assert ctl.observe(20) == pytest.approx(0.1)  # 0.1 * (20/10 - 1)
    assert ctl.observe(5) == pytest.approx(0.05)  # 0.1 * (0.5 - 1) = -0.05
    assert ctl.observe(0) == 0.0  # floored at zero
    assert ctl.realised() == pytest.approx(25 / 3)


def test_weighted_map_trades_score_for_cost_and_respects_constraints() -> None:
    means = np.array([[0.5, 0.9], [0.2, 0.9]])
    cost = np.array([1.0, 3.0])
    assert solve_weighted(means, cost, 0.0).tolist() == [1, 1]
    assert solve_weighted(means, cost, 0.3).tolist() == [0, 1]  # 0.5-0.3 > 0.9-0.9; 0.2-0.3 < 0.9-0.9
    assert solve_weighted(means, cost, 0.5).tolist() == [0, 0]
    assert solve_weighted(means, cost, 0.0, allowed=np.array([True, False])).tolist() == [0, 0]


def test_feedback_moves_the_map_and_bumps_its_version() -> None:
    router = OnlineRouter(np.array([[0.8, 0.85]]), [1.0, 3.0], target=3.0, explore_cap=0.0, prior_strength=10)
    first = router.snapshot
    assert router.choose(0).expert == 1 and first.version == 0
    for _ in range(5):
        router.feedback(0, 1, 0.0)  # expert 1 turns out bad on category 0
    assert router.snapshot.version == 5
    assert router.choose(0).expert == 0
    assert first.assignment == (1,)  # the old snapshot is never edited in place


def test_exploration_never_exceeds_its_cap_in_any_window() -> None:
    router = OnlineRouter(np.full((1, 4), 0.5), [1.0, 1.0, 1.0, 1.0], target=1.0, explore_cap=0.1, window=100)
    explored = np.array([router.choose(0).explored for _ in range(2000)])
    trailing = np.convolve(explored, np.ones(100, dtype=int), mode="valid")
    assert trailing.max() == 10  # four equal experts: the draws disagree with the map whenever allowed
    assert explored.sum() >= 180  # and it does explore, up to the cap, every window


def test_no_exploration_with_a_zero_cap_and_choices_stay_within_constraints() -> None:
    router = OnlineRouter(np.array([[0.5, 0.5, 0.9]]), [1.0, 1.0, 1.0], target=1.0, explore_cap=0.0)
    assert {router.choose(0).expert for _ in range(50)} == {2}
    allowed = [True, True, False]
    router = OnlineRouter(np.array([[0.5, 0.5, 0.9]]), [1.0, 1.0, 1.0], target=1.0, explore_cap=1.0)
    assert {router.choose(0, allowed).expert for _ in range(200)} == {0, 1}
    with pytest.raises(ValueError, match="constraints"):
        router.choose(0, [False, False, False])


def _drifting_stream(seed: int) -> np.ndarray:
    """Categories of 6,000 requests in three phases: 80% category 0, 80% category 1, then 50/50."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(2, 2000, p=mix) for mix in ([0.8, 0.2], [0.2, 0.8], [0.5, 0.5])])


def test_controller_holds_the_target_while_the_mix_drifts() -> None:
    # Category 0: the cheap expert (cost 1) scores 0.5, the dear one (cost 3) 0.9; category 1: 0.2 and 0.9.
    # Weight 0 sends everything to the dear expert (average 3, 50% over the target of 2), and no fixed
    # map holds 2 in every phase: sending category 1 alone to the dear expert costs 1.4, 2.6, 2.0.
    # In cost/target units (0.5, 1.5), category 0 turns dear below weight 0.4 and category 1 below 0.7:
    # phase 1 needs a weight near 0.4, phase 2 near 0.7. The overspend over a window is the weight moved
    # over the step, so a window at a phase change is off by at most (0.3 + jitter) / (step * 500),
    # where one request moves the weight by at most step * 0.5 (the jitter, 2 * 0.01 here).
    step = 0.02
    bound = (0.3 + 2 * step * 0.5) / (step * 500)
    offline = np.array([[0.5, 0.9], [0.2, 0.9]])
    cost = np.array([1.0, 3.0])
    for seed in range(3):
        router = OnlineRouter(offline, cost, target=2.0, explore_cap=0.0, step=step)
        spent, weights = [], []
        for category in _drifting_stream(seed):
            expert = router.choose(int(category)).expert
            router.served(expert)
            spent.append(cost[expert])
            weights.append(router.controller.weight)
        windows = np.asarray(spent).reshape(-1, 500).mean(axis=1)
        error = np.abs(windows / 2.0 - 1)
        assert error[2:].max() <= bound, windows
        assert weights[1999] == pytest.approx(0.4, abs=0.05)  # phase 1 settles at category 0's switch
        assert weights[3999] == pytest.approx(0.7, abs=0.05)  # phase 2 at category 1's


def test_overspend_equals_the_weight_moved_over_the_step() -> None:
    ctl = BudgetController(target=2.0, step=0.01, weight=5.0)  # far from the floor
    costs = np.random.default_rng(0).choice([1.0, 3.0], 400)
    for c in costs:
        ctl.observe(c)
    assert np.sum(costs / 2.0 - 1) == pytest.approx((ctl.weight - 5.0) / 0.01)


def test_readers_see_whole_maps_while_feedback_swaps_them() -> None:
    offline = np.random.default_rng(1).uniform(size=(6, 5))
    cost = np.arange(1.0, 6.0)
    router = OnlineRouter(offline, cost, target=3.0, explore_cap=0.0)
    scaled = cost / 3.0
    stop = threading.Event()

    def writer() -> None:
        rng = np.random.default_rng(2)
        try:
            for i in range(600):
                router.feedback(int(rng.integers(6)), int(rng.integers(5)), float(rng.uniform()))
                router.served(i % 5)
        finally:
            stop.set()  # the reader stops even if a write fails

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not stop.is_set() or seen == 0:
        snap = router.snapshot
        assert snap.assignment == tuple(solve_weighted(snap.means, scaled, snap.weight).tolist())
        seen += 1
    thread.join(timeout=30)
    assert router.snapshot.version == 1200


def test_automatic_signals_count_as_zero_only_where_enabled() -> None:
    router = OnlineRouter(
        np.array([[0.6, 0.5]]), [1.0, 1.0], target=1.0, prior_strength=10, signals=frozenset({"failure"})
    )
    assert router.signal(0, 0, "failure")
    assert router.posterior.mean()[0, 0] == pytest.approx(6 / 11, abs=1e-6)  # one score of 0 added
    assert not router.signal(0, 0, "timeout")  # not enabled: nothing changes
    assert router.posterior.mean()[0, 0] == pytest.approx(6 / 11, abs=1e-6)
    with pytest.raises(ValueError, match="unknown signal"):
        router.signal(0, 0, "slow")
