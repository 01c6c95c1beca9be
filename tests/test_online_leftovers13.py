"""Session 13's walk of router.online left three things seen: fixed here (session 13, branch leftovers13).

The cost weight has a cap derived from the costs (constraints forcing dear experts grew it without bound,
and a saved 1e300 resumed), a budget at or above the dearest expert is taken with a warning (it does not
bind), and a first start says at info level that no state was saved. And one not walked: ``coserve serve
--ray`` refuses a budget router.online cannot hold before any cluster starts, in the one-host words.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_online_serving import _engine, _online_library
from test_trained_routing import trained_dir  # noqa: F401  (a fixture)

from coserve.cli import main
from coserve.config import load_library
from coserve.errors import ConfigError
from coserve.router.online import OnlineRouter, resume
from coserve.router.online_model import weight_cap
from coserve.router.router import check_trained
from coserve.store.log import DecisionLog
from coserve.store.online_state import read_state, write_state

CATEGORIES = ["chat", "code"]
EXPERTS = ["small", "mid", "big"]
OFFLINE = np.array([[0.5, 0.6, 0.9], [0.1, 0.6, 1.0]])
COST = [1.0, 3.0, 7.0]  # in target units (target 3): 1/3, 1, 7/3; the smallest gap 2/3, so the cap is 4 / (2/3)
CAP = 6.0


def _router(**options: float) -> OnlineRouter:
    return OnlineRouter(OFFLINE, COST, target=3.0, step=0.5, explore_cap=0.0, prior_strength=10, **options)


@pytest.mark.parametrize(
    ("cost", "target", "cap"),
    [
        (COST, 3.0, CAP),
        ([1.0, 1.0, 3.0], 2.0, 4.0),  # one gap, 2 B: 1 target unit
        ([5.0, 5.0], 5.0, 4.0),  # every expert costs the same: the span itself
        ([2.0, 2.5, 10.0], 1.0, 8.0),  # the smallest gap is 0.5
    ],
)
def test_the_cap_is_the_span_over_the_smallest_cost_gap(cost: list[float], target: float, cap: float) -> None:
    assert weight_cap(cost, target) == pytest.approx(cap)


def test_requests_allowed_only_a_dear_expert_stop_raising_the_weight_at_the_cap() -> None:
    router = _router()
    for _ in range(100):  # each costs 7 at a target of 3: +0.5 * (7/3 - 1) = +2/3 a request, 66.7 after 100
        decision = router.choose(0, allowed=[False, False, True])
        assert decision.expert == 2
        router.served(2)
    assert router.controller.weight == pytest.approx(CAP) and router.controller.effective == pytest.approx(CAP)
    # at the cap the map sends every category to the cheapest expert (scores differ by < 1, costs by >= 2/3 x 6)
    assert router.snapshot.assignment == (0, 0)
    router.served(0)  # once cheap requests come, the weight comes down from the cap at once
    assert router.controller.weight == pytest.approx(CAP + 0.5 * (1 / 3 - 1))


def test_a_saved_weight_above_the_cap_resumes_at_the_cap_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    state = {**_router().export_state(CATEGORIES, EXPERTS), "weight": 1e300, "version": 12}
    router = _router()
    with caplog.at_level(logging.WARNING, "coserve.router"):
        assert resume(router, state, CATEGORIES, EXPERTS)  # resumed, never a failed start
    assert router.controller.weight == pytest.approx(CAP) and router.snapshot.version == 12
    assert "saved cost weight (integral 1e+300, feed-forward not resumed) is beyond this router's cap 6" in caplog.text


def test_a_saved_feed_forward_weight_above_the_cap_is_clipped_too(caplog: pytest.LogCaptureFixture) -> None:
    state = {**_router().export_state(CATEGORIES, EXPERTS), "weight": 0.5, "base": 1e300}
    router = _router(mix_window=50)
    with caplog.at_level(logging.WARNING, "coserve.router"):
        assert resume(router, state, CATEGORIES, EXPERTS)
    assert router.controller.base == pytest.approx(CAP) and router.controller.effective == pytest.approx(CAP)
    assert "feed-forward 1e+300) is beyond this router's cap 6" in caplog.text
    below = _router(mix_window=50)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "coserve.router"):  # a weight within the bounds resumes as saved
        assert resume(below, {**state, "base": 0.25}, CATEGORIES, EXPERTS)
    assert (below.controller.base, below.controller.weight) == (0.25, 0.5) and caplog.text == ""


@pytest.mark.usefixtures("trained_dir")
def test_a_budget_at_or_above_the_dearest_expert_is_taken_with_a_warning(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    library = tmp_path / "trained-library.yaml"
    for target in (7.0, 12.0):  # the library's experts cost 1, 3 and 7 B
        caplog.clear()
        with caplog.at_level(logging.WARNING, "coserve.router"):
            engine = _engine(tmp_path, cache, budget={"avg_params_b": target})
        assert engine.router.online is not None and engine.router.online.figures()["target"] == target
        assert (
            f"{library}: router.budget.avg_params_b {target:g} is at or above the dearest expert's (big: 7): "
            "the budget does not bind" in caplog.text
        )
    caplog.clear()
    with caplog.at_level(logging.WARNING, "coserve.router"):
        _engine(tmp_path, cache, budget={"avg_params_b": 6.9})
    assert "does not bind" not in caplog.text


def test_a_first_start_says_none_saved_at_info_level(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "coserve.store"):
        assert read_state(tmp_path / "absent.db") is None  # no decision log yet
        DecisionLog(tmp_path / "empty.db").start().close()  # a decision log, no state ever saved
        assert read_state(tmp_path / "empty.db") is None
    assert [(r.levelno, "none saved yet" in r.getMessage()) for r in caplog.records] == [(logging.INFO, True)] * 2


def test_a_state_table_without_its_row_still_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "decisions.db"
    with sqlite3.connect(path) as conn:
        write_state(conn, {"version": 1})
        conn.execute("DELETE FROM online_state")
    with caplog.at_level(logging.INFO, "coserve.store"):
        assert read_state(path) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "the state table in" in caplog.text and "is empty" in caplog.text


@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's own pydantic fields
@pytest.mark.usefixtures("trained_dir")
def test_serve_on_ray_refuses_a_budget_router_online_cannot_hold_before_any_cluster_starts(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    with pytest.raises(ConfigError) as one_host:  # what `coserve serve` says for this library
        _engine(tmp_path, cache, budget={"avg_params_b": 0.5})

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Ray cluster was started")

    monkeypatch.setattr(ray, "init", no_cluster)
    # in the cluster, the ingress replicas and the decision-log deployment failed to start (Ray Serve's error)
    assert main(["serve", "--ray", "--library", str(tmp_path / "trained-library.yaml")]) == 2
    assert capsys.readouterr().err == f"coserve: error: {one_host.value.message}\n"
    check_trained(load_library(_online_library(tmp_path, budget={"avg_params_b": 3.0})))  # a holdable one passes
