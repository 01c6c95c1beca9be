"""Shadow feedback (session 21, ``coserve.router.online_shadow``, ``coserve bench adapt --shadow``): a share of
requests also answered by a second expert, judged, its cost held in the budget with the answers'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_bench_adapt import _outcomes as write_outcomes

from coserve.bench.adapt import AdaptOptions, replay_adapt
from coserve.cli import main
from coserve.errors import ConfigError
from coserve.eval.costs import ExpertCosts
from coserve.eval.data import OutcomeSet
from coserve.router.drift import ChangeSettings
from coserve.router.drift_calibration import CellCalibration
from coserve.router.online import OnlineRouter
from coserve.router.online_shadow import ShadowPick

COST = [1.0, 2.0, 4.0]


def _router(**kwargs: object) -> OnlineRouter:
    offline = np.array([[0.4, 0.6, 0.8], [0.7, 0.5, 0.6]])
    return OnlineRouter(offline, COST, 2.0, **kwargs)  # type: ignore[arg-type]


def test_pick_never_returns_the_chosen_expert_and_keeps_to_the_allowed_ones() -> None:
    router = _router()
    router.shadow = ShadowPick(0.2, seed=3)
    picked, for_first = [], set()
    for i in range(3000):
        chosen = i % 3
        mask = np.array([True, True, i % 2 == 0])  # expert 2 allowed on even requests only
        shadow = router.shadow_for(i % 2, chosen, allowed=mask)
        if shadow is not None:
            assert shadow != chosen and mask[shadow]
            picked.append(shadow)
            for_first |= {shadow} if (i % 2, chosen) == (0, 0) and mask[2] else set()
    assert set(picked) == {0, 1, 2}
    assert for_first == {1, 2}  # a Thompson draw: not always the better mean (0.8 at weight 0), now and then 0.6
    only_one = np.array([False, True, False])
    assert all(router.shadow_for(0, 1, allowed=only_one) is None for _ in range(200))  # no other expert: none
    assert _router().shadow_for(0, 1) is None  # no shadow set: never


def test_the_realised_share_is_near_the_setting_and_the_draws_leave_the_routers_stream_alone() -> None:
    pick = ShadowPick(0.1, seed=0)
    router = _router()
    scaled = router._scaled_cost()
    shares = [pick.pick(router.posterior, router.snapshot, scaled, 0, 0) is not None for _ in range(20000)]
    assert abs(np.mean(shares) - 0.1) < 0.01 and pick.picked == sum(shares)
    # a router exploring with Thompson draws chooses the same experts whether or not shadows are drawn between
    plain, shadowed = _router(explore_cap=0.5, seed=7), _router(explore_cap=0.5, seed=7)
    shadowed.shadow = ShadowPick(0.2, seed=7)
    first = [plain.choose(i % 2).expert for i in range(500)]
    second = []
    for i in range(500):
        second.append(shadowed.choose(i % 2).expert)
        shadowed.shadow_for(i % 2, second[-1])
    assert first == second and shadowed.shadow.picked > 50


def test_the_shadows_cost_reaches_the_controller_as_one_observation() -> None:
    router = _router()
    router.served(0, shadow=2)
    assert router.controller.realised() == pytest.approx(5.0) and len(router.controller.recent) == 1
    alone = _router()
    alone.served(0)
    alone.served(0, shadow=None)
    assert alone.controller.realised() == pytest.approx(1.0)
    assert router.controller.weight > alone.controller.weight  # the overspend raised the weight


def test_a_shadow_score_moves_its_cell_and_is_read_without_the_calibration() -> None:
    router = _router()
    before = router.posterior.mean()[0, 0]
    router.feedback(0, 0, 1.0, shadow=True)
    assert router.posterior.mean()[0, 0] > before
    change = ChangeSettings(drift=0.0, threshold=100.0)
    chosen, shadowed = _router(change=change), _router(change=change)
    for router in (chosen, shadowed):  # the chosen expert's scores run 0.5 under their cells' estimate
        router.calibration = CellCalibration(np.full((2, 3), -0.5))
    chosen.feedback(0, 2, 0.3)
    shadowed.feedback(0, 2, 0.3, shadow=True)
    assert chosen.detector is not None and shadowed.detector is not None
    assert chosen.detector.stat["down"][2] == 0.0  # 0.3 - 0.8 read less -0.5: no drop
    assert shadowed.detector.stat["down"][2] > 0.0  # a shadow expert was not chosen: its residual as it is


def test_an_underrated_cheap_expert_is_learnt_with_shadows_and_not_without() -> None:
    # the prior puts the cheap expert at 0.3 (it scores 0.9) and the dear one at 0.7 (it scores 0.7); the budget is
    # loose, so the map keeps the dear one and, with no exploration, users never try the cheap one
    def late_share(shadow: float) -> float:
        router = OnlineRouter(np.array([[0.3, 0.7]]), [1.0, 3.0], 10.0, explore_cap=0.0)
        router.shadow = ShadowPick(shadow, seed=0) if shadow else None
        rng = np.random.default_rng(0)
        truth = (0.9, 0.7)
        chosen = []
        for _ in range(3000):
            expert = router.choose(0).expert
            other = router.shadow_for(0, expert)
            router.served(expert, shadow=other)
            router.feedback(0, expert, float(rng.random() < truth[expert]))
            if other is not None:
                router.feedback(0, other, float(rng.random() < truth[other]), shadow=True)
            chosen.append(expert)
        return float(np.mean(np.asarray(chosen[-1000:]) == 0))

    assert late_share(0.0) == 0.0
    assert late_share(0.05) > 0.9


def _replay(**knobs: object) -> dict:
    rng = np.random.default_rng(0)
    n = 300
    means = np.array([[0.8, 0.5, 0.9], [0.1, 0.8, 0.9]])
    labels = np.arange(n) % 2
    scores = (rng.random((n, 3)) < means[labels]).astype(np.float32)
    stream = OutcomeSet(
        tuple(map(str, range(n))), tuple(f"p{i}" for i in range(n)), tuple(f"c{k}" for k in labels), ("a", "b", "c"),
        scores,
    )  # fmt: skip
    costs = ExpertCosts(("a", "b", "c"), np.array([1.0, 3.0, 9.0]), np.array([0.1, 0.3, 0.9]))
    options = AdaptOptions(target=3.0, requests=3000, phases=3, granularity="category", change_calibration="none",
                           seed=1, **knobs)  # type: ignore[arg-type]  # fmt: skip
    return replay_adapt(means, stream, labels, costs, options)


def test_the_replay_judges_every_shadow_and_leaves_the_users_feedback_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int, bool]] = []
    feedback = OnlineRouter.feedback

    def recorded(self: OnlineRouter, category: int, expert: int, score: float, *args: object, **kw: object) -> None:
        calls.append((self._served, expert, bool(kw.get("shadow", False))))
        feedback(self, category, expert, score, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(OnlineRouter, "feedback", recorded)
    _replay()
    users = [served for served, _, shadow in calls if not shadow]
    calls.clear()
    report = _replay(shadow=0.1)
    assert [served for served, _, shadow in calls if not shadow] == users  # the same requests fed back by users
    shadows = [served for served, _, shadow in calls if shadow]
    assert len(shadows) == round(report["shadow_share"] * 3000) > 0  # every shadow judged, once


def test_the_replay_at_shadow_0_is_the_replay_without_it_and_a_share_is_paid_from_the_target() -> None:
    plain, zero, shadowed = _replay(), _replay(shadow=0.0), _replay(shadow=0.1)
    plain.pop("options"), zero.pop("options")
    assert plain == zero and plain["shadow_share"] == 0.0 and plain["shadow_cost_share"] == 0.0
    assert abs(shadowed["shadow_share"] - 0.1) < 0.02 and 0.0 < shadowed["shadow_cost_share"] < 1.0
    assert shadowed["phases"] == plain["phases"]  # the stream drawn alike
    # the cost per request is answer plus shadow: the windows, the realised cost and the hindsight's all include it
    windows = shadowed["windows"]
    assert shadowed["realised_avg_cost"] == pytest.approx(np.mean([w["avg_cost"] for w in windows]))
    assert shadowed["quality"]["hindsight_avg_cost"] == pytest.approx(shadowed["realised_avg_cost"])
    assert abs(shadowed["realised_avg_cost"] / 3.0 - 1) < 0.05  # held at the target, shadows included


def test_a_bad_share_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (-0.01, 0.21, float("nan")):
        with pytest.raises(ConfigError, match="shadow"):
            AdaptOptions(shadow=bad)
        with pytest.raises(ValueError, match="shadow share"):
            ShadowPick(bad)
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    assert main([*argv, "--budget-params", "3", "--json", str(tmp_path / "x.json"), "--shadow", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shadow 0.5" in err[0]  # one line, before reading anything
    assert not (tmp_path / "x.json").exists()


def test_an_uncharged_shadow_costs_nothing_and_a_quiet_one_never_reaches_the_detector() -> None:
    charged, free = _replay(shadow=0.1), _replay(shadow=0.1, shadow_charged=False)
    plain = _replay()
    # not charged: the controller and the realised cost see the answers only, so the run spends as one without shadows
    answers = np.mean([w["avg_cost"] for w in free["windows"]])
    assert free["realised_avg_cost"] == pytest.approx(answers) and abs(answers / 3.0 - 1) < 0.05
    assert free["shadow_cost_share"] > 0.0 and charged["shadow_cost_share"] > 0.0
    assert free["shadow_share"] == charged["shadow_share"]  # the same requests shadowed
    assert free["realised_avg_cost"] != charged["realised_avg_cost"] and plain["shadow_share"] == 0.0
    change = ChangeSettings(drift=0.0, threshold=100.0)
    heard, quiet = _router(change=change), _router(change=change)
    heard.shadow, quiet.shadow = ShadowPick(0.1), ShadowPick(0.1, detected=False)
    for router in (heard, quiet):
        router.feedback(0, 2, 0.1, shadow=True)
    assert heard.detector is not None and quiet.detector is not None
    assert heard.detector.stat["down"][2] > 0.0 and quiet.detector.stat["down"][2] == 0.0
    learnt = quiet.posterior.mean()[0, 2]
    assert learnt == pytest.approx(heard.posterior.mean()[0, 2]) and learnt < 0.8  # the cell learns alike
    quiet.feedback(0, 2, 0.1)  # a user's score still reaches it
    assert quiet.detector.stat["down"][2] > 0.0


def test_the_command_says_a_run_with_shadows_is_not_the_issues_benchmark(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prior, experts = tmp_path / "prior.jsonl", tmp_path / "experts.json"
    write_outcomes(prior, 1, 120)
    costs = {e: {"params_b": b, "input_price": 1, "output_price": 1} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}
    experts.write_text(json.dumps(costs))
    argv = ["bench", "adapt", "--prior", str(prior), "--experts", str(experts), "--budget-params", "3"]
    argv += ["--requests", "900", "--embedder", "hashing"]
    assert main([*argv, "--json", str(tmp_path / "plain.json")]) == 0
    assert "shadows" not in capsys.readouterr().out
    assert main([*argv, "--json", str(tmp_path / "s.json"), "--shadow", "0.1", "--no-shadow-charged"]) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads((tmp_path / "s.json").read_text())
    share = f"{report['shadow_share']:.1%}"
    assert said.startswith(f"shadows on {share} of requests") and "not charged" in said and "not the issue's" in said
