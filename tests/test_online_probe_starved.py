"""Probing a suspect expert only while its traffic has fallen (session 13, branch probe13b), exact values derived by
hand: the short- and long-run traffic shares, which suspects count as starved, the router's wiring, the settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from adapt_flags import assert_bench_adapt_refuses
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.config_routing import OnlineSettings
from coserve.router.drift import ChangeDetector
from coserve.router.online import ChangeSettings, OnlineRouter
from coserve.router.online_knobs import router_options
from coserve.router.online_probe import ChangeProbe, ProbeSettings, TrafficShares


def test_the_shares_are_running_means_then_exponential_with_each_run_s_length() -> None:
    shares = TrafficShares(3, short=2, long=4)
    for expert in (0, 0, 1, 1):
        shares.routed(expert)
    # short (1/n up to 2): [1,0,0], [1,0,0], [0.5,0.5,0], [0.25,0.75,0]
    # long (1/n up to 4): [1,0,0], [1,0,0], [2/3,1/3,0], [2/3,1/3,0] + ([0,1,0] - [2/3,1/3,0]) / 4 = [0.5,0.5,0]
    assert shares.short == pytest.approx([0.25, 0.75, 0.0]) and shares.long == pytest.approx([0.5, 0.5, 0.0])
    assert shares.starved(0.6).tolist() == [True, False, False]  # 0.25 < 0.3; 0.75 > 0.3; 0 < 0 is not
    assert shares.starved(0.5).tolist() == [False, False, False]  # 0.25 is not below 0.25


def _detector_with_b_suspect() -> ChangeDetector:
    detector = ChangeDetector(3, drift=0.0, threshold=4.0)
    detector.observe(1, -1.5)  # b's down side at 1.5 > 0.25 x 4: suspect
    return detector


def test_a_suspect_is_probed_only_while_its_short_run_share_is_below_the_ratio_of_its_long_run_one() -> None:
    settings = ProbeSettings(share=0.25, requests=5, margin=0.05, starved=0.6, short=2, long=4)
    probe, detector, objective = ChangeProbe(3, settings), _detector_with_b_suspect(), np.array([0.6, 0.58, 0.3])
    # two requests explored to b: nothing probed, both count as b's traffic (short = long = [0, 1, 0])
    assert [probe.pick(detector, objective, 0, None, explored=1) for _ in range(2)] == [None, None]
    # the map's choice a, four times. Before the 1st: short = long = [0,1,0] (b: 1 >= 0.6); before the 2nd: short
    # [0.5,0.5,0], long [1/3,2/3,0] (b: 0.5 >= 0.4); before the 3rd: short [0.75,0.25,0], long [0.5,0.5,0] (b: 0.25 <
    # 0.3: starved, probed); before the 4th: short = long = [0.375,0.625,0] (b no longer starved)
    assert [probe.pick(detector, objective, 0, None) for _ in range(4)] == [None, None, 1, None]
    assert probe.probed == 1 and probe.left.tolist() == [5, 4, 5]
    assert probe.shares.short == pytest.approx([0.6875, 0.3125, 0.0])  # [0.375,0.625,0] + ([1,0,0] - it) / 2
    unrestricted = ChangeProbe(3, ProbeSettings(share=0.25, requests=5, margin=0.05))  # starved 0: always probed
    assert unrestricted.pick(detector, objective, 0, None) == 1 and unrestricted.shares.seen == 0  # shares not kept


def test_the_router_counts_its_choices_and_does_not_probe_a_suspect_that_never_had_traffic() -> None:
    # a (0.76 with 10 pseudo-counts) scores 0.3: down side 0.41 > 0.25 x 1, a's mean 0.718 within 0.1 of b's 0.75; but
    # a has had no traffic (long-run share 0), so it is not starved: the map's choice b, and b's share grows
    probe = ProbeSettings(share=0.25, requests=3, margin=0.1, starved=0.5, short=2, long=4)
    router = OnlineRouter(np.array([[0.76, 0.75, 0.74]]), [1.0, 1.0, 1.0], 1.0, explore_cap=0.0, prior_strength=10,
                          change=ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0), probe=probe)  # fmt: skip
    router.feedback(0, 0, 0.3)
    assert [(d.expert, d.explored) for d in (router.choose(0), router.choose(0))] == [(1, False), (1, False)]
    assert router.probe.probed == 0 and router.probe.shares.short.tolist() == [0.0, 1.0, 0.0]
    assert router.probe.shares.seen == 2


def test_the_settings_carry_the_ratio_and_refuse_what_cannot_work() -> None:
    settings = OnlineSettings(change_probe=0.5, change_probe_starved=0.7)
    assert router_options(settings)["probe"] == ProbeSettings(0.5, 100, 0.05, 0.7)
    assert OnlineSettings().change_probe_starved == 0.0
    assert ProbeSettings() == ProbeSettings(0.0, 100, 0.05, 0.0, 500, 5000)
    assert AdaptOptions(change_probe=0.25, change_probe_starved=0.7).online().change_probe_starved == 0.7
    with pytest.raises(ValidationError, match="needs change_probe > 0"):
        OnlineSettings(change_probe_starved=0.5)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            OnlineSettings(change_probe=0.5, change_probe_starved=bad)
    for starved, short, long in ((1.5, 500, 5000), (-0.1, 500, 5000), (0.5, 0, 5000), (0.5, 500, 500)):
        with pytest.raises(ValueError, match="change_probe_starved"):
            ProbeSettings(0.5, 100, 0.05, starved, short, long)


def test_bench_adapt_takes_the_starved_flag_and_refuses_bad_ones_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = (
        (["--change-probe-starved", "0.5"], "needs change_probe > 0"),
        (["--change-probe", "0.5", "--change-probe-starved", "1.5"], "change_probe_starved: Input should be less"),
    )
    assert_bench_adapt_refuses(tmp_path, capsys, cases)


def test_every_routed_request_joins_the_shares_an_explored_one_as_its_explored_expert() -> None:
    # explore_cap 1 and 2 pseudo-counts: Thompson draws often pick another expert than the map. Nothing is suspect
    # (no feedback), so the shares (running means while under 100 requests) are exactly each expert's decision share
    probe = ProbeSettings(share=0.25, requests=3, margin=0.1, starved=0.5, short=100, long=200)
    router = OnlineRouter(np.array([[0.6, 0.55, 0.5]]), [1.0, 1.0, 1.0], 1.0, explore_cap=1.0, prior_strength=2,
                          change=ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0), probe=probe)  # fmt: skip
    decisions = [router.choose(0) for _ in range(50)]
    assert any(d.explored for d in decisions) and router.probe.probed == 0
    counts = np.bincount([d.expert for d in decisions], minlength=3)
    assert router.probe.shares.seen == 50
    assert router.probe.shares.short == pytest.approx(counts / 50) and router.probe.shares.long == pytest.approx(
        counts / 50
    )
