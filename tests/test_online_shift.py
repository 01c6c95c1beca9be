"""A downward alarm's move per category (``change_shift_pool``, session 20): each category moves by its own
residuals in the episode, shrunk toward the pooled shift; a category without any moves by the pooled shift."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeSettings
from coserve.router.online import OnlineRouter
from coserve.router.online_knobs import router_options
from coserve.router.online_shift import CategoryEvidence

M, PRIOR = 0.7, 1000.0  # expert 0's offline mean in every category, and its pseudo-counts (updates barely move it)


def _router(pool: float) -> OnlineRouter:
    change = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0, shift_pool=pool)
    return OnlineRouter(np.array([[M, 0.5]] * 3), [1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=PRIOR,
                        max_count=2 * PRIOR, change=change)  # fmt: skip


def _drop_by_category(pool: float) -> tuple[OnlineRouter, np.ndarray, float]:
    """Scores 0, 0.7, 0 of expert 0 in categories 0, 1, 0: down side 0.65, 0.60, then past 1: the alarm.
    Returns the router, each category's move, and the pooled shift."""
    router = _router(pool)
    before = router.posterior.mean()[:, 0].copy()
    for category, score in ((0, 0.0), (1, M), (0, 0.0)):
        router.feedback(category, 0, score)
    assert router.alarms == 1
    # what each cell's mean was just before the alarm moved it: category 0 took two 0s, category 1 one 0.7
    a0 = PRIOR * M + 1e-6
    b0 = PRIOR * (1 - M) + 1e-6
    just_before = np.array([a0 / (a0 + b0 + 2), (a0 + M) / (a0 + b0 + 1), before[2]])
    return router, router.posterior.mean()[:, 0] - just_before, float(router.alarm_log[-1]["shift"])


def test_a_drop_moves_each_category_by_its_own_residuals_shrunk_to_the_pooled_shift() -> None:
    a0, b0 = PRIOR * M + 1e-6, PRIOR * (1 - M) + 1e-6
    r1, r2, r3 = 0.0 - a0 / (a0 + b0), M - a0 / (a0 + b0), 0.0 - a0 / (a0 + b0 + 1)  # against each estimate
    pooled = (r1 + r2 + r3) / 3
    _, moves, shift = _drop_by_category(5.0)
    assert shift == pytest.approx(pooled, abs=1e-9)
    expected = [(r1 + r3 + 5 * pooled) / 7, (r2 + 5 * pooled) / 6, pooled]  # category 2 had no feedback
    assert moves == pytest.approx(expected, abs=1e-6)
    assert moves[0] < pooled < moves[1]  # the category the evidence came from moves most
    _, same, shift0 = _drop_by_category(0.0)  # off: every category by the pooled shift
    assert same == pytest.approx([shift0] * 3, abs=1e-6) and shift0 == pytest.approx(pooled, abs=1e-9)


def test_the_episode_restarts_with_the_detector_s_down_side() -> None:
    router = _router(5.0)
    router.feedback(0, 0, 0.0)  # joins: the down side at 0.65
    assert router.episode.count[0, 0] == 1
    for _ in range(20):  # scores at the mean: the down side falls by the drift to 0, and the episode restarts
        router.feedback(1, 0, M)
    assert router.detector is not None and router.detector.count["down"][0] == 0
    assert router.episode.count.sum() == 0 and router.alarms == 0


def test_category_evidence_by_hand() -> None:
    evidence = CategoryEvidence(2, 1, pool=2.0)
    evidence.observed(0, 0, -0.6, True)
    evidence.observed(0, 0, -0.3, True)
    assert evidence.move(0, -0.2) == pytest.approx([(-0.9 - 0.4) / 4, -0.2])
    evidence.observed(1, 0, 0.1, False)  # the down side went back to 0: nothing kept
    assert evidence.move(0, -0.2) == pytest.approx([-0.2, -0.2])
    assert CategoryEvidence(2, 1).move(0, -0.2) == -0.2  # off: the pooled shift
    with pytest.raises(ValueError, match="pool"):
        CategoryEvidence(2, 1, pool=-1.0)


def test_the_setting_is_off_by_default_checked_and_carried() -> None:
    assert OnlineSettings().change_shift_pool == 0 and AdaptOptions().change_shift_pool == 0
    options = router_options(OnlineSettings(change_shift_pool=10.0))
    assert options["change"].shift_pool == 10.0
    router = OnlineRouter.from_settings(np.array([[M, 0.5]]), [1.0, 1.0], 1.0, OnlineSettings(change_shift_pool=10.0))
    assert router.episode.pool == 10.0 and _router(0.0).episode.pool == 0.0
    assert AdaptOptions(change_shift_pool=20.0).online().change_shift_pool == 20.0
    for bad in ({"change_model": "proportional"}, {"change_anchor": True}, {"change_reference": "running"}):
        with pytest.raises(ValidationError, match="change_shift_pool splits the plain detector's move"):
            OnlineSettings(change_shift_pool=5.0, **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^change_shift_pool: Input should be greater than or equal to 0$"):
        AdaptOptions(change_shift_pool=-1.0)
    with pytest.raises(ValueError, match="finite"):
        ChangeSettings(shift_pool=float("inf"))
