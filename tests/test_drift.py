"""Noticing change: the CUSUM on an expert's residuals, the feed-forward weight, and how the router uses both."""

from __future__ import annotations

import numpy as np
import pytest

from coserve.router.drift import ChangeDetector, weight_for_mix
from coserve.router.online import BudgetController, ChangeSettings, OnlineRouter, ScorePosterior


def test_cusum_alarms_when_the_downward_sum_passes_the_threshold() -> None:
    detector = ChangeDetector(2, drift=0.1, threshold=0.5)
    assert detector.observe(0, -0.3) is None  # down: 0.3 - 0.1 = 0.2
    assert detector.observe(0, -0.3) is None  # 0.4
    assert detector.observe(0, -0.3) == pytest.approx(-0.3)  # 0.6 > 0.5: the mean residual since the start
    assert detector.stat["down"][0] == 0.0 and detector.count["down"][0] == 0.0  # restarted
    assert detector.stat["down"][1] == 0.0  # the other expert is untouched


def test_cusum_estimates_the_shift_from_the_residuals_since_it_last_stood_at_zero() -> None:
    detector = ChangeDetector(1, drift=0.1, threshold=0.5)
    # down: 0.2; then +0.4 takes it below zero (restart); then 0.1, 0.5 (not > 0.5), 0.6: alarm.
    # up: 0, 0.3, 0.3 - 0.2 - 0.1 = 0 (restart), 0, 0: never alarms.
    for residual in (-0.3, 0.4, -0.2, -0.5):
        assert detector.observe(0, residual) is None
    assert detector.observe(0, -0.2) == pytest.approx((-0.2 - 0.5 - 0.2) / 3)


def test_cusum_alarms_upward_too_and_its_state_round_trips() -> None:
    detector = ChangeDetector(1, drift=0.0, threshold=1.0)
    assert detector.observe(0, 0.6) is None
    saved = detector.export_state()
    fresh = ChangeDetector(1, drift=0.0, threshold=1.0)
    fresh.restore(saved)
    assert fresh.observe(0, 0.6) == pytest.approx(0.6)  # 1.2 > 1: resumed where it stood
    with pytest.raises(ValueError, match="shape"):
        fresh.restore({**saved, "stat_up": [0.0, 0.0]})
    with pytest.raises(ValueError, match="incomplete"):
        fresh.restore({"stat_up": [0.0]})


def test_weight_for_mix_is_the_smallest_weight_whose_map_meets_the_target() -> None:
    # Cost 1 and 3 against a target of 2: scaled costs 0.5 and 1.5. Category 0 turns cheap at weight 0.4
    # (0.5 - 0.5w = 0.9 - 1.5w), category 1 at 0.7 (0.2 - 0.5w = 0.9 - 1.5w). With 20% of category 1,
    # the map [cheap, dear] costs 0.8 * 0.5 + 0.2 * 1.5 = 0.7 <= 1, so 0.4 is enough; with 80% it costs
    # 1.3, and only 0.7 (both cheap: 0.5) meets the target.
    means = np.array([[0.5, 0.9], [0.2, 0.9]])
    scaled = np.array([0.5, 1.5])
    assert weight_for_mix(means, scaled, np.array([8, 2])) == pytest.approx(0.4, abs=1e-9)
    assert weight_for_mix(means, scaled, np.array([2, 8])) == pytest.approx(0.7, abs=1e-9)
    assert weight_for_mix(means, np.array([0.5, 0.9]), np.array([1, 1])) == 0.0  # weight 0 already costs 0.9
    assert weight_for_mix(means, scaled, np.array([0, 0])) == 0.0  # no requests seen: no push


def test_rebase_moves_one_experts_means_and_cuts_its_counts() -> None:
    post = ScorePosterior(np.array([[0.6, 0.5], [0.4, 0.5]]), prior_strength=10, max_count=100)
    post.rebase(0, -0.2, 5.0)
    assert post.mean()[:, 0] == pytest.approx([0.4, 0.2], abs=1e-6)
    assert post.count()[:, 0] == pytest.approx([5.0, 5.0], abs=1e-5)
    assert post.count()[:, 1] == pytest.approx([10.0, 10.0], abs=1e-5)  # the other expert keeps its evidence
    post.rebase(1, -0.7, 50.0)  # clipped at 0; counts never grow
    assert post.mean()[:, 1] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert post.count()[:, 1] == pytest.approx([10.0, 10.0], abs=1e-5)


def test_controller_feed_forward_base_and_the_integral_floor() -> None:
    ctl = BudgetController(target=2.0, step=0.1)
    ctl.set_base(0.5)
    assert ctl.effective == 0.5
    ctl.observe(4.0)  # integral 0.1 * (2 - 1) = 0.1
    assert ctl.effective == pytest.approx(0.6)
    for _ in range(10):
        ctl.observe(0.0)  # -0.1 each, floored at -base so the effective weight stays >= 0
    assert ctl.weight == pytest.approx(-0.5) and ctl.effective == 0.0
    ctl.set_base(0.2)
    assert ctl.weight == pytest.approx(-0.2) and ctl.effective == 0.0


def test_router_feed_forward_follows_the_mix_of_recent_requests() -> None:
    # The two categories of test_weight_for_mix_...: phase 1 sends 80% category 0, phase 2 80% category 1.
    # Over any 100 recent requests the share of category 1 stays on its side of 0.5 (binomial, seeded), so
    # the feed-forward weight is 0.4 at the end of phase 1 and 0.7 at the end of phase 2, exactly.
    router = OnlineRouter(np.array([[0.5, 0.9], [0.2, 0.9]]), [1.0, 3.0], target=2.0, explore_cap=0.0, mix_window=100)
    rng = np.random.default_rng(0)
    for mix, base in (([0.8, 0.2], 0.4), ([0.2, 0.8], 0.7)):
        for category in rng.choice(2, 1000, p=mix):
            router.served(router.choose(int(category)).expert)
        assert router.controller.base == pytest.approx(base, abs=1e-6)  # the posterior floors move means by 1e-7


def test_router_notices_a_changed_expert_and_rebases_it() -> None:
    change = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0)
    router = OnlineRouter(
        np.array([[0.8, 0.6]]), [1.0, 1.0], target=1.0, explore_cap=0.0, prior_strength=10, change=change
    )
    assert router.choose(0).expert == 0
    # Scores of 0.3 for expert 0 (prior 8 / 2): means before each update 0.8, 8.3/11, 8.6/12; residuals
    # -0.5, -0.4545, -0.4167; the down statistic 0.45, 0.8545, 1.2212 > 1 at the third: an alarm.
    residuals = [0.3 - 0.8, 0.3 - 8.3 / 11, 0.3 - 8.6 / 12]
    for _ in range(3):
        router.feedback(0, 0, 0.3)
    assert router.alarms == 1
    # After the third update the mean is 8.9 / 13; moved by the mean residual, with 2 pseudo-counts left.
    assert router.posterior.mean()[0, 0] == pytest.approx(8.9 / 13 + np.mean(residuals), abs=1e-5)
    assert router.posterior.count()[0, 0] == pytest.approx(2.0, abs=1e-5)
    assert router.choose(0).expert == 1
    state = router.export_state(["c"], ["a", "b"])
    assert state["change"]["stat_down"] == [0.0, 0.0]  # restarted after the alarm, and saved


def test_router_without_a_detector_never_rebases() -> None:
    router = OnlineRouter(np.array([[0.8, 0.6]]), [1.0, 1.0], target=1.0, explore_cap=0.0, prior_strength=10)
    for _ in range(3):
        router.feedback(0, 0, 0.3)
    assert router.alarms == 0 and router.posterior.mean()[0, 0] == pytest.approx(8.9 / 13, abs=1e-6)
    assert "change" not in router.export_state(["c"], ["a", "b"])
