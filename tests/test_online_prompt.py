"""The online router's prompt mode: per-prompt predictions corrected by what feedback taught each category."""

from __future__ import annotations

import numpy as np
import pytest

from coserve.config_routing import OnlineSettings
from coserve.router.online import OnlineRouter


def _router(granularity: str, **knobs: float) -> OnlineRouter:
    # One category; experts A and B at the same cost, so only the scores decide.
    # Offline table S: A 0.6, B 0.5 (10 pseudo-counts each: A is alpha 6, beta 4).
    return OnlineRouter(
        np.array([[0.6, 0.5]]),
        [1.0, 1.0],
        target=1.0,
        prior_strength=10,
        max_count=100,
        explore_cap=0.0,
        granularity=granularity,
        **knobs,
    )


def test_feedback_enters_the_cell_as_the_residual_against_the_prompts_prediction() -> None:
    router = _router("prompt")
    router.feedback(0, 0, 1.0, predicted=0.9)  # 1.0 - (0.9 - 0.6) = 0.7: alpha 6.7, beta 4.3
    assert router.posterior.alpha[0, 0] == pytest.approx(6.7, abs=1e-5)
    assert router.posterior.beta[0, 0] == pytest.approx(4.3, abs=1e-5)
    category = _router("category")
    category.feedback(0, 0, 1.0, predicted=0.9)  # category mode ignores the prediction: alpha 7, beta 4
    assert category.posterior.alpha[0, 0] == pytest.approx(7.0, abs=1e-5)


def test_a_prompt_the_offline_prediction_sends_to_a_goes_to_b_once_feedback_moved_its_category() -> None:
    router = _router("prompt")
    near, far = [0.8, 0.6], [0.9, 0.3]  # both favour A offline: by 0.2 and by 0.6
    assert router.choose(0, predicted=near).expert == 0
    # Scores of 0 for A on prompts predicted at 0.8 enter as clip(0 - 0.2) = 0: A's mean is 6 / (10 + n).
    for _ in range(4):
        router.feedback(0, 0, 0.0, predicted=0.8)
    assert router.choose(0, predicted=near).expert == 0  # 0.8 + 6/14 - 0.6 = 0.629 > 0.6
    for _ in range(2):
        router.feedback(0, 0, 0.0, predicted=0.8)
    assert router.choose(0, predicted=near).expert == 1  # 0.8 + 6/16 - 0.6 = 0.575 < 0.6: B
    assert router.choose(0, predicted=far).expert == 0  # 0.9 - 0.225 = 0.675 > 0.3: still A
    # The category map (category mode, the same feedback) sends every prompt of the category to B.
    category = _router("category")
    for _ in range(6):
        category.feedback(0, 0, 0.0, predicted=0.8)  # A: 6 / 16 = 0.375 < B's 0.5
    assert category.choose(0, predicted=far).expert == 1


def test_a_prompt_mode_request_without_a_prediction_is_routed_by_its_category() -> None:
    router = _router("prompt")
    assert router.choose(0).expert == 0  # the category's 0.6 over 0.5
    with pytest.raises(ValueError, match="finite"):
        router.choose(0, predicted=[0.5])  # one score for two experts


def test_the_prompt_weight_keeps_a_share_of_the_prompts_offset() -> None:
    router = _router("prompt", prompt_weight=0.5)
    # A: 0.6 + 0.5 * (0.62 - 0.6) = 0.61; B: 0.5 + 0.5 * (0.7 - 0.5) = 0.6: A (with weight 1 B would win)
    assert router.choose(0, predicted=[0.62, 0.7]).expert == 0
    assert _router("prompt").choose(0, predicted=[0.62, 0.7]).expert == 1


def _mix_router() -> OnlineRouter:
    # Two categories, experts A (cost 1) and B (cost 3), target 2: in target units A 0.5, B 1.5. Every
    # prompt predicts A at 0.5 and B at 0.5 + d, so B wins iff d > weight; the target holds iff at most
    # half the prompts go to B.
    settings = OnlineSettings(prior_strength=10, max_count=100, explore_cap=0.0, change_threshold=0.0)
    settings = settings.model_copy(update={"granularity": "prompt", "mix_window": 200, "step": 0.01})
    return OnlineRouter.from_settings(np.array([[0.5, 0.6], [0.5, 0.9]]), [1.0, 3.0], 2.0, settings)


def test_the_feed_forward_weight_is_the_smallest_whose_recent_prompts_hold_the_target() -> None:
    router = _mix_router()
    gaps = np.random.default_rng(3).uniform(0.0, 0.5, 200)
    for d in gaps:
        decision = router.choose(0, predicted=[0.5, 0.5 + d])
        router.served(decision.expert)
    # After 200 served (a multiple of 25) the base is refreshed from these 200 prompts: B iff d > w, so
    # the smallest w sending at most 100 to B is the 101st largest gap.
    assert router.controller.base == pytest.approx(np.sort(gaps)[-101], abs=1e-6)


def test_the_budget_holds_in_prompt_mode_when_the_mix_shifts() -> None:
    # Category 0's gaps are uniform on (0, 0.5), category 1's on (0.3, 0.6): all-category-0 traffic, then
    # 1 : 1. At weight 0 every prompt goes to B (cost 3, 50% over). The feed-forward weight puts half of
    # the last 200 prompts on B; it lags a phase change by up to 200 prompts and the integral part
    # corrects the rest, so after 300 requests of settling each phase's average is asserted within 5%.
    router = _mix_router()
    rng = np.random.default_rng(5)
    cost = np.array([1.0, 3.0])
    spent = []
    for i in range(2400):
        category = 0 if i < 1200 or i % 2 == 0 else 1
        d = rng.uniform(0.0, 0.5) if category == 0 else rng.uniform(0.3, 0.6)
        decision = router.choose(category, predicted=[0.5, 0.5 + d])
        router.served(decision.expert)
        spent.append(cost[decision.expert])
    for phase in (spent[300:1200], spent[1500:2400]):
        assert np.mean(phase) == pytest.approx(2.0, rel=0.05)


def test_a_state_learnt_in_the_other_mode_is_not_resumed() -> None:
    from coserve.router.online import resume

    learnt = _router("category")
    learnt.feedback(0, 0, 0.0)
    state = learnt.export_state(["k"], ["a", "b"])
    router = _router("prompt")
    assert not resume(router, state, ["k"], ["a", "b"])  # category cells hold scores, prompt cells residuals
    assert router.posterior.alpha[0, 0] == pytest.approx(6.0, abs=1e-5)  # nothing changed
    old = {key: value for key, value in state.items() if key != "granularity"}  # saved before session 8
    assert resume(_router("category"), old, ["k"], ["a", "b"])
    assert not resume(router, old, ["k"], ["a", "b"])
    assert resume(_router("prompt"), _router("prompt").export_state(["k"], ["a", "b"]), ["k"], ["a", "b"])
