"""The real server with `router.online`: feedback moves the map, once per request, and survives a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from test_trained_routing import CHAT, CODE, _library, _post, trained_dir  # noqa: F401  (a fixture)

from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.paths import decision_log_path
from coserve.router.embed import HashingEmbedder
from coserve.server.app import create_app
from coserve.server.auth import hash_key

pytestmark = pytest.mark.usefixtures("trained_dir")  # `coserve train` on separable data, in tmp_path/router


def _online_library(tmp_path: Path, **router: Any) -> Path:
    path = _library(tmp_path, "router")  # small 1B, mid 3B, big 7B; the trained map sends code to big
    data = yaml.safe_load(path.read_text())
    # the exact values below are derived per category (prompt mode, the default, has its own tests)
    online = {"prior_strength": 2, "explore_cap": 0.0, "granularity": "category"}
    data["router"].update({"budget": {"avg_params_b": 7.0}, "online": online})
    data["router"].update(router)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _engine(tmp_path: Path, cache: Path, **router: Any) -> Engine:
    return Engine.build(load_library(_online_library(tmp_path, **router)), cache, embedder=HashingEmbedder())


def _feedback(client: TestClient, request_id: str, score: Any) -> Any:
    return client.post("/v1/feedback", json={"id": request_id, "score": score})


def test_feedback_moves_the_map_once_per_request_and_a_restart_keeps_it(tmp_path: Path, cache: Path) -> None:
    with TestClient(create_app(_engine(tmp_path, cache))) as client:
        first, second = _post(client, CODE).json(), _post(client, CODE).json()
        assert first["coserve"]["expert"] == second["coserve"]["expert"] == "big"
        assert _feedback(client, first["id"], -1.0).status_code == 200
        # Code's posterior for big: 2 pseudo-counts at 1.0, plus one 0 -> 2/3, still above mid's 0.6.
        assert _post(client, CODE).json()["coserve"]["expert"] == "big"
        again = _feedback(client, first["id"], -1.0)  # a second score for the same request
        assert again.status_code == 400 and again.json()["error"]["code"] == "feedback_exists"
        assert _post(client, CODE).json()["coserve"]["expert"] == "big"  # the refused score changed nothing
        assert _feedback(client, second["id"], -1.0).status_code == 200  # 2/4 = 0.5 < 0.6: mid now
        moved = _post(client, CODE).json()
        assert moved["coserve"]["expert"] == "mid"
        assert _feedback(client, "no-such-request", 1.0).status_code == 404
        assert _feedback(client, moved["id"], 1.5).status_code == 422
        metrics = client.get("/metrics").text
        assert 'coserve_budget_target{axis="params"} 7.0' in metrics
        assert "coserve_map_version" in metrics and "coserve_cost_weight" in metrics
    with sqlite3.connect(decision_log_path()) as conn:
        versions = [v for (v,) in conn.execute("SELECT map_version FROM decisions ORDER BY time")]
    assert len(versions) == 5 and None not in versions and versions == sorted(versions)
    with TestClient(create_app(_engine(tmp_path, cache))) as client:  # a restart: the learned map stays
        assert _post(client, CODE).json()["coserve"]["expert"] == "mid"
        # A score for a request routed before the restart is tied to it through the log: mid's code score
        # goes from 0.6 (1.2 / 2 pseudo-counts) to 1.2 / 3 = 0.4, below big's 0.5, so code goes back to big.
        assert _feedback(client, moved["id"], -1.0).status_code == 200
        assert _post(client, CODE).json()["coserve"]["expert"] == "big"


def test_a_corrupt_state_starts_from_the_offline_map_with_a_warning(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(_engine(tmp_path, cache))) as client:
        assert _post(client, CODE).status_code == 200
    with sqlite3.connect(decision_log_path()) as conn:
        conn.execute("UPDATE online_state SET body = 'garbage'")
    with TestClient(create_app(_engine(tmp_path, cache))) as client:
        assert _post(client, CODE).json()["coserve"]["expert"] == "big"
    assert "corrupt" in caplog.text


def test_online_needs_a_budget(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match="budget"):
        _engine(tmp_path, cache, budget={})


@pytest.mark.parametrize(("signals", "mean", "mapped"), [(["failure"], 0.5, "mid"), ([], 1.0, "big")])
def test_an_enabled_failure_signal_moves_the_map(
    tmp_path: Path, cache: Path, signals: list[str], mean: float, mapped: str
) -> None:
    path = _online_library(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["router"]["online"]["signals"] = signals
    for expert in data["experts"]:
        if expert["name"] == "big":
            expert["options"] = {**expert["options"], "fail_generate": True}  # fails before its first token
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    engine = Engine.build(load_library(path), cache, embedder=HashingEmbedder())
    with TestClient(create_app(engine)) as client:
        for _ in range(2):  # each failure is a score of 0 for (code, big): 2/3, then 2/4 < mid's 0.6
            response = _post(client, CODE)
            assert response.status_code == 200 and response.headers["x-coserve-expert"] != "big"
    online = engine.router.online
    assert online is not None
    code, big = online.categories.index("code"), online.experts.index("big")
    assert online.router.posterior.mean()[code, big] == pytest.approx(mean, abs=1e-5)
    assert online.experts[online.router.snapshot.assignment[code]] == mapped
    assert online.router.controller.realised() == pytest.approx(3.0)  # mid (3 B) answered both, not big


def test_feedback_past_the_keys_rate_is_refused_and_not_applied(tmp_path: Path, cache: Path) -> None:
    server = {"api_keys": [{"sha256": hash_key("sk-test"), "requests_per_minute": 3}]}
    engine = Engine.build(load_library(_with_server(tmp_path, server)), cache, embedder=HashingEmbedder())
    auth = {"authorization": "Bearer sk-test"}
    with TestClient(create_app(engine)) as client:
        body = {"model": "coserve", "messages": [{"role": "user", "content": CODE}], "max_tokens": 4}
        first = client.post("/v1/chat/completions", json=body, headers=auth).json()["id"]
        second = client.post("/v1/chat/completions", json=body, headers=auth).json()["id"]
        assert client.post("/v1/feedback", json={"id": first, "score": -1.0}, headers=auth).status_code == 200
        refused = client.post("/v1/feedback", json={"id": second, "score": -1.0}, headers=auth)  # the 4th request
        assert refused.status_code == 429
    with sqlite3.connect(decision_log_path()) as conn:
        assert conn.execute("SELECT count(*) FROM feedback WHERE id = ?", (second,)).fetchone() == (0,)
    online = engine.router.online
    assert online is not None
    code, big = online.categories.index("code"), online.experts.index("big")
    assert online.router.posterior.mean()[code, big] == pytest.approx(2 / 3, abs=1e-5)  # one score of 0 only


def _with_server(tmp_path: Path, server: dict[str, Any]) -> Path:
    path = _online_library(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["server"] = {**data.get("server", {}), **server}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("granularity", ["category", "prompt"])
def test_the_budget_holds_when_the_mix_shifts(tmp_path: Path, cache: Path, granularity: str) -> None:
    # Target 4 B params; code's best is big (7 B, score 1.0) then mid (3 B, 0.6); chat's is small (1 B).
    # In cost/target units big is 1.75 and mid 0.75: code moves from big to mid at weight 0.4, so
    # all-code traffic settles on a big/mid mix averaging 4, and so does 3 code : 1 chat (code at 5).
    # Without the controller all-code traffic would cost 7 and the mixed phase 5.5. (In prompt mode each
    # request adds its text's offset from its category to these scores, the same for every request of one
    # text, so the same argument holds at another switching weight.) Over 100 requests the
    # overspend is (weight moved) * 4 / 0.05, and the weight stays within a step's move (0.05 * 0.75) of
    # 0.4 once settled, so a phase is off by at most 2 * 0.0375 * 80 / 400 = 1.5%; 5% is asserted.
    engine = _engine(
        tmp_path,
        cache,
        budget={"avg_params_b": 4.0},
        online={"prior_strength": 2, "explore_cap": 0.0, "step": 0.05, "granularity": granularity},
    )
    size = {"small": 1.0, "mid": 3.0, "big": 7.0}
    spent: list[float] = []
    with TestClient(create_app(engine)) as client:
        for i in range(300):
            text = CHAT if i >= 150 and i % 4 == 3 else CODE  # 150 all code, then 3 code : 1 chat
            spent.append(size[_post(client, text).json()["coserve"]["expert"]])
    for phase in (spent[50:150], spent[200:300]):  # each phase after 50 requests of settling
        assert sum(phase) / len(phase) == pytest.approx(4.0, rel=0.05)


def test_the_dashboard_shows_the_budget_controller_and_the_map_in_force(tmp_path: Path, cache: Path) -> None:
    """/ui/api/map carries the live controller: the target, what the window spent, the weight and the
    version of the online map, whose entries follow feedback (same arithmetic as the test above)."""
    with TestClient(create_app(_engine(tmp_path, cache))) as client:
        before = client.get("/ui/api/map").json()["budget"]
        assert before["axis"] == "params" and before["target"] == 7.0 and before["realised"] is None
        assert before["map"]["code"] == "big" and before["weight"] == 0.0
        first, second = _post(client, CODE).json(), _post(client, CODE).json()
        served = client.get("/ui/api/map").json()["budget"]
        assert served["realised"] == 7.0  # both answered by big (7 B), exactly on target: the weight stays 0
        assert served["weight"] == 0.0
        for answer in (first, second):
            assert _feedback(client, answer["id"], -1.0).status_code == 200
        after = client.get("/ui/api/map").json()["budget"]
        assert after["map"]["code"] == "mid" and after["map_version"] > before["map_version"]


def test_prompt_mode_learns_a_score_as_the_residual_against_the_requests_prediction(
    tmp_path: Path, cache: Path
) -> None:
    from coserve.router.trained import load_trained

    trained = load_trained(tmp_path / "router")
    predicted = trained.scores(HashingEmbedder().encode([CODE]))[0]  # the stack's scores for this text
    code, big = trained.classes.index("code"), trained.experts.index("big")
    S = float(trained.S[code, big])
    assert abs(float(predicted[big]) - S) > 1e-3  # the prompt sits off its category (0.008): the two modes differ
    engine = _engine(tmp_path, cache, online={"prior_strength": 2, "explore_cap": 0.0, "granularity": "prompt"})
    posterior = engine.router.online.router.posterior  # type: ignore[union-attr]
    alpha, beta = float(posterior.alpha[code, big]), float(posterior.beta[code, big])
    with TestClient(create_app(engine)) as client:
        answer = _post(client, CODE).json()
        assert answer["coserve"]["expert"] == "big"
        assert _feedback(client, answer["id"], 1.0).status_code == 200  # a score of 1 for big on this prompt
    learnt = min(1.0, max(0.0, 1.0 - (float(predicted[big]) - S)))  # 1 minus the prompt's offset from code
    assert posterior.alpha[code, big] == pytest.approx(alpha + learnt, abs=1e-9)
    assert posterior.beta[code, big] == pytest.approx(beta + 1.0 - learnt, abs=1e-9)


def test_the_feedback_baseline_of_the_change_detector_survives_a_restart(tmp_path: Path, cache: Path) -> None:
    online = {"prior_strength": 2, "explore_cap": 0.0, "granularity": "category", "change_baseline": "feedback"}
    with TestClient(create_app(_engine(tmp_path, cache, online=online))) as client:
        ids = [_post(client, CODE).json()["id"] for _ in range(2)]  # both to big (the trained map's choice)
        assert [_feedback(client, i, s).status_code for i, s in zip(ids, (1.0, -1.0), strict=True)] == [200, 200]
    engine = _engine(tmp_path, cache, online=online)
    with TestClient(create_app(engine)):
        live = engine.router.online
        assert live is not None and live.router.baseline is not None
        code, big = live.categories.index("code"), live.experts.index("big")
        # big's own feedback on code: scores 1 and 0 (thumbs up, down), mean 0.5 over 2; nothing else has any
        assert live.router.baseline.count[code, big] == 2 and live.router.baseline.mean[code, big] == 0.5
        assert live.router.baseline.count.sum() == 2


def _online_gauges(client: TestClient) -> dict[str, float]:
    """The online router's gauges in ``/metrics`` (name with labels -> value)."""
    names = ("coserve_budget_target", "coserve_cost_weight", "coserve_map_version")
    lines = client.get("/metrics").text.splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line.startswith(names))}


def test_metrics_show_the_map_after_a_score_and_the_resumed_map_before_the_first_request(
    tmp_path: Path, cache: Path
) -> None:
    # A 5 B target: each answer by big (7 B) moves the integral weight by step * (7 / 5 - 1) = 0.002.
    expected = {'coserve_budget_target{axis="params"}': 5.0, "coserve_cost_weight": pytest.approx(0.004)}
    with TestClient(create_app(_engine(tmp_path, cache, budget={"avg_params_b": 5.0}))) as client:
        first, second = _post(client, CODE).json(), _post(client, CODE).json()
        assert first["coserve"]["expert"] == second["coserve"]["expert"] == "big"
        assert _feedback(client, first["id"], 1.0).status_code == 200
        # three updates (two answers, one score), each a new map version; the score's is in force now
        assert _online_gauges(client) == {**expected, "coserve_map_version": 3.0}
    with TestClient(create_app(_engine(tmp_path, cache, budget={"avg_params_b": 5.0}))) as client:
        # the restarted server resumed the saved state: /metrics says so before any request arrives
        assert _online_gauges(client) == {**expected, "coserve_map_version": 3.0}


def test_metrics_show_an_answered_requests_cost_before_any_score(tmp_path: Path, cache: Path) -> None:
    # docs/adapt.md: the realised average is NaN only until a routed request has been answered. One
    # answer by big (7 B) at a 5 B target: realised 7.0 over the window, the integral weight
    # step * (7 / 5 - 1) = 0.002, one update (map version 1); no score is sent.
    with TestClient(create_app(_engine(tmp_path, cache, budget={"avg_params_b": 5.0}))) as client:
        assert _post(client, CODE).json()["coserve"]["expert"] == "big"
        lines = client.get("/metrics").text.splitlines()
        realised = next(line for line in lines if line.startswith("coserve_budget_realised"))
        assert realised == 'coserve_budget_realised{axis="params"} 7.0'
        assert _online_gauges(client) == {
            'coserve_budget_target{axis="params"}': 5.0,
            "coserve_cost_weight": pytest.approx(0.002),
            "coserve_map_version": 1.0,
        }
