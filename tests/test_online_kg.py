"""Exploration by the value of information (``explore_policy: kg``, session 16, ``online_kg``)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from coserve.bench.adapt import AdaptOptions
from coserve.bench.adapt_baselines import regained
from coserve.cli import main
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeSettings
from coserve.router.online import OnlineRouter
from coserve.router.online_kg import KGSettings, KnowledgeGradient, gain, observation_spread
from coserve.router.online_knobs import router_options
from coserve.router.online_model import ScorePosterior

NAMES = (["k"], ["cheap", "dear"])


def test_the_gain_is_zero_for_a_certain_cell_and_grows_with_its_spread() -> None:
    values = np.array([[0.5, 0.6]])
    assert gain(values, np.array([0.0, 0.0])).tolist() == [[0.0, 0.0]]
    # z = -0.1 / 0.1 = -1: g(-1) = -Phi(-1) + phi(1) = -0.158655 + 0.241971
    assert gain(values, np.array([0.1, 0.0]))[0, 0] == pytest.approx(0.1 * 0.0833155, abs=1e-7)
    spreads = [0.01, 0.03, 0.1, 0.3]
    gains = [gain(values, np.array([s, s]))[0, 0] for s in spreads]
    assert all(a < b for a, b in itertools.pairwise(gains)) and gains[0] < 1e-12
    # at a tie the gain is s * phi(0) for both; the best and the second get the same gain for the same spread
    assert gain(np.array([[0.6, 0.6]]), np.array([0.2, 0.2]))[0].tolist() == pytest.approx([0.2 * 0.398942] * 2)
    third = gain(np.array([[0.5, 0.6, 0.1]]), np.full(3, 0.05))[0, 0]  # a third expert far below changes nothing
    assert third == pytest.approx(gain(values, np.full(2, 0.05))[0, 0])


@pytest.mark.parametrize("count", [2.0, 10.0, 100.0])
def test_the_spread_is_the_sd_of_the_cells_mean_change_from_one_score(count: float) -> None:
    """Against the posterior's own update (its count cap included): a 0/1 score of predictive mean m moves the mean
    by (s - m) / (n + 1)."""
    m = 0.7
    moves = []
    for score in (1.0, 0.0):
        posterior = ScorePosterior(np.array([[m]]), prior_strength=count, max_count=count)  # at the cap
        posterior.update(0, 0, score)
        moves.append(float(posterior.mean()[0, 0]) - m)
    sd = np.sqrt(m * moves[0] ** 2 + (1 - m) * moves[1] ** 2)  # P(score 1) = m
    assert observation_spread(np.array([m]), np.array([count]))[0] == pytest.approx(sd, rel=1e-5)


def _router(horizon: float = 1000.0, cap: float = 0.1, policy_on: bool = True, **options) -> OnlineRouter:
    """cheap (cost 1) rated 0.5 on 10 pseudo-counts, dear (cost 3) 0.6 and then well known (200 scores of 0.6);
    a 3 B target, so the cost weight rests at 0 and each request goes to the best score."""
    router = OnlineRouter(
        np.array([[0.5, 0.6]]), [1.0, 3.0], 3.0, prior_strength=10, max_count=1000, explore_cap=cap, window=100,
        kg=KGSettings(policy_on, horizon), **options,
    )  # fmt: skip
    for _ in range(200):
        router.feedback(0, 1, 0.6)
    return router


def _drive(router: OnlineRouter, requests: int, truth=(0.8, 0.6), allowed=None) -> list[tuple[int, bool]]:
    chosen = []
    for _ in range(requests):
        decision = router.choose(0, allowed)
        router.served(decision.expert)
        router.feedback(0, decision.expert, truth[decision.expert])
        chosen.append((decision.expert, decision.explored))
    return chosen


def test_an_underrated_cheap_expert_is_tried_and_when_good_wins_the_traffic() -> None:
    chosen = _drive(_router(), 300)
    assert chosen[0] == (0, True)  # tried at once: its wide cell is worth a trial 0.1 below the best
    assert chosen[-100:] == [(0, False)] * 100  # learnt: the map's own choice now, no longer exploring
    # off (Thompson under the same cap never draws cheap above a well-known 0.6 often enough; here cap 0): never
    assert {e for e, _ in _drive(_router(cap=0.0, policy_on=False), 300)} == {1}


def test_a_bad_cheap_expert_is_tried_a_little_then_left() -> None:
    chosen = _drive(_router(), 400, truth=(0.2, 0.6))
    tried = sum(e == 0 for e, _ in chosen)
    assert 1 <= tried <= 5 and all(e == 1 for e, _ in chosen[-300:])


def test_a_cell_whose_error_cannot_change_the_decision_is_not_explored() -> None:
    # b is barely known (2 pseudo-counts: spread 0.13) but 0.7 below a (well known): no observation can make it
    # the best
    router = OnlineRouter(np.array([[0.9, 0.2]]), [1.0, 1.0], 1.0, prior_strength=2, max_count=1000,
                          explore_cap=1.0, kg=KGSettings(True, 1000.0))  # fmt: skip
    for _ in range(200):
        router.feedback(0, 0, 0.9)
    assert {router.choose(0).expert for _ in range(500)} == {0}
    router.posterior.alpha[0, 1], router.posterior.beta[0, 1] = 1.7, 0.3  # now 0.85: within reach, still wide
    router.resolve()
    assert any(router.choose(0).explored for _ in range(50))


def test_a_moved_expert_is_retested_only_where_the_move_could_change_the_choice() -> None:
    # two categories; an alarm-like move cuts b to 2 pseudo-counts and 0.1 lower in both: in category 0 it is then
    # 0.05 below a (within reach), in category 1 0.6 below (out of reach)
    router = OnlineRouter(np.array([[0.6, 0.65], [0.9, 0.4]]), [1.0, 1.0], 1.0, prior_strength=100, max_count=100,
                          explore_cap=1.0, kg=KGSettings(True, 1000.0))  # fmt: skip
    router.posterior.rebase(1, -0.1, 2.0)
    router.resolve()
    assert router.snapshot.assignment == (0, 0)
    assert router.choose(0).explored and router.choose(0).expert == 1
    assert {router.choose(1).expert for _ in range(200)} == {0}


def test_the_cap_is_never_exceeded() -> None:
    # every expert alike, three of them barely known: kg would explore every request; the cap holds it to 10%
    router = OnlineRouter(np.full((1, 4), 0.5), [1.0] * 4, 1.0, prior_strength=2, max_count=1000, explore_cap=0.1,
                          window=100, kg=KGSettings(True, 1e6))  # fmt: skip
    for _ in range(500):
        router.feedback(0, 0, 0.5)
    explored = np.array([router.choose(0).explored for _ in range(2000)])
    trailing = np.convolve(explored, np.ones(100, dtype=int), mode="valid")
    assert trailing.max() <= 10 and explored.sum() >= 180  # up to the cap, every window


def test_the_requests_constraints_are_respected() -> None:
    assert {e for e, _ in _drive(_router(), 200, allowed=np.array([False, True]))} == {1}
    assert _drive(_router(), 50, allowed=np.array([True, False])) == [(0, False)] * 50  # the only one: no exploring


def test_the_feedback_share_is_learnt_saved_and_resumed() -> None:
    kg = KnowledgeGradient(2, 10, KGSettings(True))
    assert kg.feedback_share() == 0.5  # before anything: a uniform prior's mean
    for i in range(8):
        kg.joined(0, np.zeros(2))
        if i % 4 == 0:
            kg.scored()
    assert kg.feedback_share() == pytest.approx(3 / 10)
    router = _router()
    _drive(router, 20)
    state = json.loads(json.dumps(router.export_state(*NAMES)))
    assert state["kg_counts"] == [20, 220]
    fresh = _router()
    _drive(fresh, 5)  # its own recent requests stay: a replica values its own traffic
    fresh.restore(state, *NAMES)
    assert fresh.kg.export_state() == [20, 220] and (fresh.kg.category == 0).sum() == 5
    del state["kg_counts"]  # a state saved before the setting existed resumes with fresh counts
    fresh.restore(state, *NAMES)
    assert fresh.kg.export_state() == [0, 0]
    for bad in ([1], [1, -2], [1.5, 2], "x"):
        with pytest.raises(ValueError, match="feedback counts"):
            fresh.restore({**state, "kg_counts": bad}, *NAMES)
    assert fresh.kg.export_state() == [0, 0]  # a refused state changes nothing


def test_settings_are_validated_off_by_default_and_carried() -> None:
    assert (
        OnlineSettings().explore_policy == "thompson"
        and not OnlineRouter.from_settings(np.array([[0.5, 0.6]]), [1.0, 3.0], 3.0, OnlineSettings()).kg.on
    )
    settings = OnlineSettings(explore_policy="kg", explore_cap=0.05, kg_horizon=500)
    assert router_options(settings)["kg"] == KGSettings(True, 500.0)
    assert OnlineRouter.from_settings(np.array([[0.5, 0.6]]), [1.0, 3.0], 3.0, settings).kg.on  # the server's path
    assert AdaptOptions(explore_policy="kg", explore_cap=0.05, kg_horizon=300).online().kg_horizon == 300
    with pytest.raises(ValidationError, match="explore_policy kg explores under explore_cap: it needs explore_cap > 0"):
        OnlineSettings(explore_policy="kg")
    for bad in ({"kg_horizon": 0}, {"kg_horizon": float("inf")}, {"explore_policy": "ucb"}):
        with pytest.raises(ValidationError):
            OnlineSettings(explore_cap=0.05, **{"explore_policy": "kg", **bad})
    with pytest.raises(ConfigError, match=r"^kg_horizon: "):
        AdaptOptions(explore_policy="kg", explore_cap=0.05, kg_horizon=-1.0)
    with pytest.raises(ValueError, match="kg_horizon must be"):
        KGSettings(True, 0.0)


def test_bench_adapt_takes_the_kg_flags_and_refuses_bad_ones_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    argv += ["--budget-params", "3", "--json", str(tmp_path / "x.json")]
    for flags, says in (
        (["--explore-policy", "kg"], "it needs explore_cap > 0"),
        (["--explore-policy", "kg", "--explore-cap", "0.05", "--kg-horizon", "0"], "kg_horizon: Input should be"),
    ):
        assert main([*argv, *flags]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_the_replay_marks_whether_a_false_drops_expert_regained_its_traffic() -> None:
    chosen = np.array([1, 0] * 50 + [1] * 100 + [1, 0] * 50 + [1] * 100)  # 0 gets half, none, half, none
    alarms = [
        {"request": 99, "expert": "a", "side": "down", "true": False},  # 0 had half the traffic; gets it back
        {"request": 299, "expert": "a", "side": "down", "true": False},  # then never again
        {"request": 150, "expert": "b", "side": "down", "true": True},  # a true drop: not marked
    ]
    regained(chosen, alarms, ["a", "b"], shock_at=1000, window=100)
    assert [a.get("regained") for a in alarms] == [True, False, None]
    stopped = [{"request": 199, "expert": "a", "side": "down", "true": False}]  # 0 had none before it
    regained(chosen, stopped, ["a", "b"], shock_at=1000, window=100)
    assert stopped[0]["regained"] is None


def _settling(settle: int) -> OnlineRouter:
    """a (0.8 on 10 pseudo-counts) scores 0.55 until a downward alarm moves it to 0.5 with 2 counts: 0.1 below b
    (0.6, well known), within reach of one more score; explore_cap 1, so kg explores wherever it values a trial."""
    router = OnlineRouter(np.array([[0.8, 0.6]]), [1.0, 1.0], 1.0, explore_cap=1.0, prior_strength=10,
                          max_count=1000, change=ChangeSettings(drift=0.05, threshold=1.0, reset_count=2.0),
                          kg=KGSettings(True, 1000.0, settle))  # fmt: skip
    for _ in range(200):
        router.feedback(0, 1, 0.6)
    while router.alarms == 0:
        router.feedback(0, 0, 0.55)
    assert router.snapshot.assignment == (1,) and router.posterior.count()[0, 0] == pytest.approx(2.0, abs=1e-5)
    return router


def test_kg_settle_keeps_the_re_tests_off_a_just_moved_expert_for_its_requests() -> None:
    assert _settling(0).choose(0).explored  # off: re-tested at once, for its just-cut cells' spread
    router = _settling(50)
    decisions = [router.choose(0) for _ in range(80)]
    explored = [i for i, d in enumerate(decisions) if d.explored]
    assert explored[0] == 50 and {decisions[i].expert for i in explored} == {0}  # then as before
    assert {d.expert for d in decisions[:50]} == {1}  # the map's choice meanwhile
    assert router.kg.export_settling() == [0, 0]


def test_kg_settles_requests_are_saved_resumed_and_checked() -> None:
    router = _settling(50)
    for _ in range(20):
        router.choose(0)
    state = json.loads(json.dumps(router.export_state(["k"], ["a", "b"])))
    assert state["kg_settle"] == [30, 0]
    fresh = OnlineRouter(np.array([[0.8, 0.6]]), [1.0, 1.0], 1.0, explore_cap=1.0, kg=KGSettings(True, 1000.0, 50))
    fresh.restore(state, ["k"], ["a", "b"])
    assert fresh.kg.export_settling() == [30, 0] and not fresh.choose(0).explored
    shorter = OnlineRouter(np.array([[0.8, 0.6]]), [1.0, 1.0], 1.0, explore_cap=1.0, kg=KGSettings(True, 1000.0, 10))
    shorter.restore(state, ["k"], ["a", "b"])
    assert shorter.kg.export_settling() == [10, 0]  # at most this router's own kg_settle
    del state["kg_settle"]  # a state saved before the setting existed: nothing settling
    fresh.restore(state, ["k"], ["a", "b"])
    assert fresh.kg.export_settling() == [0, 0]
    for bad in ([1], [1, -2], [1.5, 0], "x"):
        with pytest.raises(ValueError, match="kg settling requests"):
            fresh.restore({**state, "kg_settle": bad}, ["k"], ["a", "b"])
    assert fresh.kg.export_settling() == [0, 0]  # a refused state changes nothing


def test_kg_settle_is_off_by_default_validated_and_carried() -> None:
    assert OnlineSettings().kg_settle == 0 and AdaptOptions().kg_settle == 0 and KGSettings().settle == 0
    settings = OnlineSettings(explore_policy="kg", explore_cap=0.05, kg_settle=500)
    assert router_options(settings)["kg"] == KGSettings(True, 100.0, 500)
    assert AdaptOptions(explore_policy="kg", explore_cap=0.05, kg_settle=300).online().kg_settle == 300
    with pytest.raises(ValidationError, match="kg_settle withholds explore_policy kg's bonus: it needs explore_po"):
        OnlineSettings(kg_settle=500)
    with pytest.raises(ValidationError):
        OnlineSettings(explore_policy="kg", explore_cap=0.05, kg_settle=-1)
    with pytest.raises(ConfigError, match=r"^kg_settle: "):
        AdaptOptions(explore_policy="kg", explore_cap=0.05, kg_settle=-1)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="kg_settle must be"):
            KGSettings(True, 100.0, bad)  # type: ignore[arg-type]


def test_bench_adapt_refuses_kg_settle_without_kg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    argv += ["--budget-params", "3", "--json", str(tmp_path / "x.json"), "--kg-settle", "500"]
    assert main(argv) == 2
    assert "it needs explore_policy kg" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
