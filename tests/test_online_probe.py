"""Probing an expert the change detector suspects (session 13, branch probe13), exact values derived by hand: which
requests are probed, the episode's request budget and its renewal, the saved counts, and the settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from adapt_flags import assert_bench_adapt_refuses
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeDetector
from coserve.router.online import ChangeSettings, OnlineRouter, resume
from coserve.router.online_knobs import router_options
from coserve.router.online_probe import ChangeProbe, ProbeSettings

CHANGE = ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0)
CATEGORIES, EXPERTS = ["chat"], ["a", "b", "c"]


def _detector(downs: list[float]) -> ChangeDetector:
    """A detector (drift 0, level 4) whose down sides stand at ``downs``: one residual of ``-down`` each."""
    detector = ChangeDetector(len(downs), drift=0.0, threshold=4.0)
    for expert, down in enumerate(downs):
        if down > 0:
            detector.observe(expert, -down)
    return detector


def test_a_suspect_within_the_margin_is_probed_until_its_episode_budget_is_spent() -> None:
    # level 4, share 0.25: suspect above 1.0. b stands at 1.5; the request's choice a scores 0.6, b 0.58 (within
    # 0.05), c 0.3
    probe = ChangeProbe(3, ProbeSettings(share=0.25, requests=2, margin=0.05))
    detector, objective = _detector([0.0, 1.5, 0.0]), np.array([0.6, 0.58, 0.3])
    assert [probe.pick(detector, objective, 0, None) for _ in range(3)] == [1, 1, None]  # the budget of 2, spent
    assert probe.left.tolist() == [2, 0, 2] and probe.probed == 2
    detector.observe(1, 1.0)  # down 0.5: still above 0, the budget is not renewed (and b is no longer suspect)
    assert probe.pick(detector, objective, 0, None) is None and probe.left.tolist() == [2, 0, 2]
    detector.observe(1, 0.6)  # back at 0: renewed
    assert probe.pick(detector, objective, 0, None) is None and probe.left.tolist() == [2, 2, 2]
    detector.observe(1, -1.2)  # 1.2 > 1: suspect again, with a whole budget
    assert probe.pick(detector, objective, 0, None) == 1 and probe.left.tolist() == [2, 1, 2]


def test_no_probe_outside_the_margin_the_constraints_the_suspicion_or_where_it_is_the_choice() -> None:
    objective = np.array([0.6, 0.58, 0.3])
    narrow = ChangeProbe(3, ProbeSettings(share=0.25, requests=5, margin=0.01))  # 0.58 < 0.6 - 0.01
    assert narrow.pick(_detector([0.0, 1.5, 0.0]), objective, 0, None) is None
    probe = ChangeProbe(3, ProbeSettings(share=0.25, requests=5, margin=0.05))
    assert probe.pick(_detector([0.0, 1.5, 0.0]), objective, 0, np.array([True, False, True])) is None  # not allowed
    assert probe.pick(_detector([0.0, 1.0, 0.0]), objective, 0, None) is None  # at 0.25 x 4, not above
    assert probe.pick(_detector([1.5, 0.0, 0.0]), objective, 0, None) is None  # the suspect is the choice already
    assert probe.pick(None, objective, 0, None) is None  # no detector
    off = ChangeProbe(3)  # share 0: off
    assert not off.active and off.pick(_detector([0.0, 3.0, 0.0]), objective, 0, None) is None
    assert probe.probed == 0 and probe.left.tolist() == [5, 5, 5]


def test_of_several_suspects_the_one_standing_highest_is_probed() -> None:
    # b at 1.5 and c at 2.5 are both suspect and both within a margin of 0.5 of a's 0.6
    probe = ChangeProbe(3, ProbeSettings(share=0.25, requests=5, margin=0.5))
    assert probe.pick(_detector([0.0, 1.5, 2.5]), np.array([0.6, 0.58, 0.3]), 0, None) == 2


def _suspect_router(requests: int = 3, margin: float = 0.1) -> OnlineRouter:
    # a (0.76 with 10 pseudo-counts) scores 0.3: residual -0.46, down side 0.46 - 0.05 = 0.41 > 0.25 x 1 (and < 1);
    # a's mean is now 7.9 / 11 = 0.718182, below b's 0.75 (the choice at weight 0) by 0.0318, within 0.1
    router = OnlineRouter(np.array([[0.76, 0.75, 0.74]]), [1.0, 1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10,
                          change=CHANGE, probe=ProbeSettings(share=0.25, requests=requests, margin=margin))  # fmt: skip
    router.feedback(0, 0, 0.3)
    assert router.detector is not None and router.detector.stat["down"][0] == pytest.approx(0.41)
    return router


def test_the_router_routes_requests_to_the_suspect_then_the_map_once_its_budget_is_spent() -> None:
    router = _suspect_router(requests=3)
    decisions = [router.choose(0) for _ in range(4)]
    assert [(d.expert, d.explored) for d in decisions] == [(0, True)] * 3 + [(1, False)]
    assert router.probe.probed == 3 and sum(router.explored) == 3  # a probe counts as exploring
    assert router.choose(0, allowed=[False, True, True]).expert == 1
    # two scores of 1: residuals 1 - 0.718182 and 1 - 8.9 / 12; the down side 0.078182, then 0: renewed at the next
    # request
    router.feedback(0, 0, 1.0)
    assert router.detector is not None and router.detector.stat["down"][0] == pytest.approx(0.078182, abs=1e-6)
    router.feedback(0, 0, 1.0)
    assert router.detector.stat["down"][0] == 0.0
    decision = router.choose(0)  # a's mean is 9.9 / 13 = 0.7615 > 0.75 now: the map's choice, not a probe
    assert (decision.expert, decision.explored) == (0, False) and router.probe.left.tolist() == [3, 3, 3]
    narrow = _suspect_router(margin=0.02)  # 0.0318 apart: not probed
    assert narrow.choose(0).expert == 1 and narrow.probe.probed == 0


def test_the_probe_budgets_are_saved_and_resumed_within_the_resuming_router_s_own() -> None:
    router = _suspect_router(requests=3)
    router.choose(0)
    state = router.export_state(CATEGORIES, EXPERTS)
    assert state["change_probe"] == [2, 3, 3]
    fresh = _suspect_router(requests=3)
    assert resume(fresh, state, CATEGORIES, EXPERTS) and fresh.probe.left.tolist() == [2, 3, 3]
    smaller = _suspect_router(requests=1)
    assert resume(smaller, state, CATEGORIES, EXPERTS) and smaller.probe.left.tolist() == [1, 1, 1]
    older = {key: value for key, value in state.items() if key != "change_probe"}  # saved before this branch
    assert resume(fresh, older, CATEGORIES, EXPERTS) and fresh.probe.left.tolist() == [3, 3, 3]
    for bad in ([-1, 0, 0], [1.5, 0, 0], [1, 0], "many", [float("nan"), 0, 0]):
        fresh.probe.left[:] = [1, 2, 3]
        assert not resume(fresh, {**state, "change_probe": bad}, CATEGORIES, EXPERTS)
        assert fresh.probe.left.tolist() == [1, 2, 3]  # nothing changed


def test_the_settings_carry_the_probe_and_refuse_what_cannot_work() -> None:
    settings = OnlineSettings(change_probe=0.5, change_probe_requests=20, change_probe_margin=0.1)
    assert router_options(settings)["probe"] == ProbeSettings(0.5, 20, 0.1)
    defaults = OnlineSettings()
    assert (defaults.change_probe, defaults.change_probe_requests, defaults.change_probe_margin) == (0.0, 100, 0.05)
    online = AdaptOptions(change_probe=0.25, change_probe_requests=50).online()
    assert (online.change_probe, online.change_probe_requests, online.change_probe_margin) == (0.25, 50, 0.05)
    with pytest.raises(ValidationError, match="needs change_threshold > 0"):
        OnlineSettings(change_probe=0.5, change_threshold=0)
    for bad in (
        {"change_probe": 1.0},
        {"change_probe": -0.1},
        {"change_probe_requests": 0},
        {"change_probe_margin": -1},
    ):
        with pytest.raises(ValidationError):
            OnlineSettings(**bad)
    with pytest.raises(ConfigError, match="change_probe: Input should be less than 1"):
        AdaptOptions(change_probe=1.5)
    for share, requests, margin in ((1.0, 5, 0.1), (0.5, 0, 0.1), (0.5, 5, -0.1), (0.5, 5, float("inf"))):
        with pytest.raises(ValueError, match="change_probe"):
            ProbeSettings(share, requests, margin)


def test_bench_adapt_takes_the_probe_flags_and_refuses_bad_ones_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = (
        (["--change-probe", "1.5"], "change_probe: Input should be less than 1"),
        (
            ["--change-probe", "0.5", "--change-probe-requests", "0"],
            "change_probe_requests: Input should be greater",
        ),
        (["--change-probe", "0.5", "--change-probe-margin", "-1"], "change_probe_margin: Input should be greater"),
        (["--change-probe", "0.5", "--change-threshold", "0"], "needs change_threshold > 0"),
    )
    assert_bench_adapt_refuses(tmp_path, capsys, cases)
