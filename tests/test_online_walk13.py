"""Session 13's operator walk of router.online: what a walk through docs/adapt.md found refused badly.

A budget the controller cannot hold, both budget axes, infinite knobs, a saved state whose map version
the decision log cannot store or whose detector statistics are not an object: each refused with a clear
message, nothing changed; and a score for a request no expert answered is stored, not learnt.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError
from test_online_serving import _engine, _feedback, _online_library
from test_trained_routing import CODE, _post, trained_dir  # noqa: F401  (a fixture)

from coserve.config import Budget, load_library
from coserve.config_routing import OnlineSettings
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.paths import decision_log_path
from coserve.router.embed import HashingEmbedder
from coserve.router.online import ChangeSettings, OnlineRouter, resume
from coserve.server.app import create_app

CATEGORIES = ["chat", "math"]
EXPERTS = ["small", "big"]
OFFLINE = np.array([[0.8, 0.85], [0.2, 0.9]])


def _router() -> OnlineRouter:
    return OnlineRouter(OFFLINE, [1.0, 3.0], target=2.0, explore_cap=0.0, prior_strength=10, change=ChangeSettings())


@pytest.mark.usefixtures("trained_dir")
@pytest.mark.parametrize(
    ("budget", "says"),
    [
        # the library's experts cost 1, 3 and 7 B: no map averages 0.5 B, and the weight would only grow
        ({"avg_params_b": 0.5}, "router.budget.avg_params_b 0.5 is below the cheapest expert's (small: 1)"),
        # the controller divides each cost by the target (this was a ValueError traceback)
        ({"avg_price": 0.0}, "router.budget.avg_price must be above 0"),
        ({}, "router.online: needs a router.budget"),
    ],
)
def test_a_budget_the_controller_cannot_hold_is_refused_at_start(
    tmp_path: Path, cache: Path, budget: dict[str, float], says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        _engine(tmp_path, cache, budget=budget)
    message = str(refused.value)
    assert message.startswith(str(tmp_path / "trained-library.yaml") + ": ")  # names the library, as the rest
    assert says in message


@pytest.mark.usefixtures("trained_dir")
def test_a_budget_at_the_cheapest_experts_cost_is_held(tmp_path: Path, cache: Path) -> None:
    engine = _engine(tmp_path, cache, budget={"avg_params_b": 1.0})  # every request on small: exactly 1
    assert engine.router.online is not None and engine.router.online.figures()["target"] == 1.0


def test_a_budget_names_one_axis() -> None:
    with pytest.raises(ValidationError, match="avg_params_b or avg_price, not both"):
        Budget(avg_params_b=3.0, avg_price=1.0)
    with pytest.raises(ValidationError):
        Budget(avg_params_b=math.inf)


@pytest.mark.parametrize("knob", ["step", "prior_strength", "max_count", "change_threshold", "weight_floor"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_online_settings_refuse_infinite_and_nan_values(knob: str, value: float) -> None:
    with pytest.raises(ValidationError, match=knob):
        OnlineSettings(**{knob: value})


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        # beyond SQLite's INTEGER: resumed, it stopped the decision log's writer thread at the next row
        ({"version": 2**63}, "version"),
        ({"version": True}, "version"),  # JSON true is not a map version
        ({"change": "garbage"}, "change detector"),  # was resumed with a fresh detector, without a word
    ],
)
def test_a_saved_state_with_an_impossible_version_or_detector_is_refused(
    changes: dict[str, Any], says: str, caplog: pytest.LogCaptureFixture
) -> None:
    trained = _router()
    trained.feedback(0, 1, 0.0)
    state = {**trained.export_state(CATEGORIES, EXPERTS), **changes}
    fresh = _router()
    before = fresh.posterior.mean().copy()
    with caplog.at_level(logging.WARNING, logger="coserve.router"):
        assert not resume(fresh, state, CATEGORIES, EXPERTS)
    assert "online state not resumed" in caplog.text and says in caplog.text
    assert fresh.snapshot.version == 0 and np.array_equal(fresh.posterior.mean(), before)


def test_the_largest_version_a_state_may_carry_resumes() -> None:
    state = {**_router().export_state(CATEGORIES, EXPERTS), "version": 2**53}
    fresh = _router()
    assert resume(fresh, state, CATEGORIES, EXPERTS) and fresh.snapshot.version == 2**53


@pytest.mark.usefixtures("trained_dir")
def test_a_score_for_a_request_no_expert_answered_is_stored_and_not_learnt(tmp_path: Path, cache: Path) -> None:
    path = _online_library(tmp_path)
    data = yaml.safe_load(path.read_text())
    for expert in data["experts"]:  # every expert fails before its first token: the request ends 502
        expert["options"] = {**expert["options"], "fail_generate": True}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    engine = Engine.build(load_library(path), cache, embedder=HashingEmbedder())
    online = engine.router.online
    assert online is not None
    before = online.router.posterior.mean().copy()
    with TestClient(create_app(engine)) as client:
        assert _post(client, CODE).status_code == 502  # its id is in the decision log only
        logged, status = _only_row()
        assert status == "502"
        assert _feedback(client, logged, -1.0).status_code == 200  # stored, as without router.online
        # learnt, this thumbs down would take big's code mean from 1 to 2/3 (2 pseudo-counts); no expert
        # answered (the failures are the automatic signals' to count, where enabled), so nothing moves
        assert np.array_equal(online.router.posterior.mean(), before)
        assert _feedback(client, logged, -1.0).json()["error"]["code"] == "feedback_exists"  # stored once
    with sqlite3.connect(decision_log_path()) as conn:
        assert conn.execute("SELECT score FROM feedback WHERE id = ?", (logged,)).fetchall() == [(-1.0,)]


def _only_row() -> tuple[str, str]:
    """The decision log's one row (id, status), once the writer has written it (it batches every 0.2 s)."""
    for _ in range(100):
        with sqlite3.connect(decision_log_path()) as conn:
            rows = conn.execute("SELECT id, status FROM decisions").fetchall()
        if rows:
            ((request_id, status),) = rows
            return request_id, status
        time.sleep(0.05)
    raise AssertionError("no row written in 5 s")


@pytest.mark.usefixtures("trained_dir")
def test_the_dashboard_lists_the_trained_routers_categories_and_the_online_map(tmp_path: Path, cache: Path) -> None:
    """A trained router brings its categories (the library has none): the dashboard's map table is built
    from /ui/api/map's ``categories``, which were empty, so the online map in force was never shown."""
    with TestClient(create_app(_engine(tmp_path, cache))) as client:
        data = client.get("/ui/api/map").json()
    assert data["categories"] == ["chat", "code"]  # the trained router's classes (write_separable's)
    assert data["source"] == "trained"
    assert data["budget"]["map"] == {"chat": "small", "code": "big"}  # the online map, as the page shows it
    assert set(data["map"]) == {"chat", "code"}  # the trained router's own map at its training budget


def _mixed_router() -> OnlineRouter:
    return OnlineRouter(OFFLINE, [1.0, 3.0], target=2.0, explore_cap=0.0, prior_strength=10, mix_window=50)


def test_a_restart_resumes_the_whole_cost_weight_feed_forward_part_included() -> None:
    """The weight in force is the feed-forward part plus the integral part; only the latter was saved, so
    /metrics' weight fell at a restart (0.315 to 0.003 on the walk's burst) and the first 25 requests were
    routed as if the budget did not bind."""
    before = _mixed_router()
    for _ in range(25):  # all math: big (3) is the math expert; the mix needs a weight that sends math to small
        before.served(before.choose(1).expert)
    # the map at weight w sends math to big while 0.9 - 0.2 > w (3 - 1) / 2: every weight above 0.7 costs 1
    assert before.controller.base == pytest.approx(0.7, abs=1e-6)
    state = before.export_state(CATEGORIES, EXPERTS)
    after = _mixed_router()
    assert resume(after, state, CATEGORIES, EXPERTS)
    assert after.controller.base == before.controller.base
    assert after.controller.effective == before.controller.effective
    assert after.snapshot.assignment == before.snapshot.assignment


def test_a_state_without_the_feed_forward_part_resumes_it_at_0_and_a_bad_one_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = _mixed_router()
    saved.controller.weight = 0.25
    state = saved.export_state(CATEGORIES, EXPERTS)
    older = {k: v for k, v in state.items() if k != "base"}  # saved before session 13
    after = _mixed_router()
    assert resume(after, older, CATEGORIES, EXPERTS)
    assert after.controller.base == 0.0 and after.controller.effective == 0.25
    for bad in ("0.5", math.inf, True):
        fresh = _mixed_router()
        with caplog.at_level(logging.WARNING, logger="coserve.router"):
            assert not resume(fresh, {**state, "base": bad}, CATEGORIES, EXPERTS)
        assert fresh.controller.effective == 0.0
    assert "feed-forward" in caplog.text
