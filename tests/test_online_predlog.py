"""The per-prompt prediction a request was routed with, kept in the decision log (column ``predicted``):
a feedback score is learnt against it after a restart, after the router forgot it, and by the cluster's
owner before any replica sent it; an older log gains the column and its NULL falls back to the category
mean; retention prunes rows with it as before. Exact values derived by hand in each test."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_online_serving import _engine, _feedback, _online_library
from test_trained_routing import CODE, _post, trained_dir  # noqa: F401  (a fixture)

from coserve.distributed.shared_log import DecisionLogService
from coserve.engine.engine import Engine
from coserve.paths import decision_log_path
from coserve.router import online_live
from coserve.router.embed import HashingEmbedder
from coserve.router.trained import load_trained
from coserve.server.app import create_app
from coserve.store.log import DecisionLog, DecisionRow
from coserve.store.predicted import encode_prediction, read_prediction
from coserve.store.retention import Retention

pytestmark = pytest.mark.usefixtures("trained_dir")  # `coserve train` on separable data, in tmp_path/router

PROMPT = {"prior_strength": 2, "explore_cap": 0.0, "granularity": "prompt"}  # 2 pseudo-counts, no exploring


def _expected(tmp_path: Path, engine: Engine) -> tuple[int, int, dict[str, float], float]:
    """Code's and big's indices, the trained router's scores for CODE by expert, and what an API score of 0
    (0.5) on CODE answered by big teaches code's cell for big: 0.5 less the prompt's offset from code's mean
    (the mean the cell started from: the trained table's, kept inside (0, 1))."""
    trained = load_trained(tmp_path / "router")
    scores = trained.scores(HashingEmbedder().encode([CODE]))[0]
    code, big = trained.classes.index("code"), trained.experts.index("big")
    assert engine.router.online is not None
    mean = float(engine.router.online.router.offline[code, big])
    assert mean == pytest.approx(float(trained.S[code, big]), abs=1e-5)
    offset = float(scores[big]) - mean
    assert abs(offset) > 1e-3  # the prompt sits off its category: the category mean would teach 0.5 instead
    learnt = 0.5 - offset
    assert 0.0 < learnt < 1.0  # inside [0, 1]: no clipping hides the difference
    return code, big, dict(zip(trained.experts, map(float, scores), strict=True)), learnt


def _cell(engine: Engine, code: int, big: int) -> tuple[float, float]:
    online = engine.router.online
    assert online is not None
    posterior = online.router.posterior
    return float(posterior.alpha[code, big]), float(posterior.beta[code, big])


def _moved(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def test_a_score_after_a_restart_moves_the_cell_as_it_would_have_before(tmp_path: Path, cache: Path) -> None:
    engine = _engine(tmp_path, cache, online=PROMPT)
    code, big, scores, learnt = _expected(tmp_path, engine)
    with TestClient(create_app(engine)) as client:
        first, second = _post(client, CODE).json(), _post(client, CODE).json()
        assert first["coserve"]["expert"] == second["coserve"]["expert"] == "big"
        start = _cell(engine, code, big)
        assert _feedback(client, first["id"], 0.0).status_code == 200  # remembered: learnt against it
        before_restart = _moved(start, _cell(engine, code, big))
    assert before_restart == pytest.approx((learnt, 1.0 - learnt), abs=1e-9)
    with sqlite3.connect(decision_log_path()) as conn:
        logged = [read_prediction(text) for (text,) in conn.execute("SELECT predicted FROM decisions ORDER BY time")]
    assert logged == [pytest.approx(scores, abs=1e-12)] * 2  # each decision keeps what it was routed with
    restarted = _engine(tmp_path, cache, online=PROMPT)
    with TestClient(create_app(restarted)) as client:
        resumed = _cell(restarted, code, big)
        assert resumed == pytest.approx((start[0] + learnt, start[1] + 1.0 - learnt), abs=1e-9)  # state resumed
        assert restarted.router.online is not None and restarted.router.online.prediction(second["id"]) is None
        assert _feedback(client, second["id"], 0.0).status_code == 200  # routed before the restart
        after_restart = _moved(resumed, _cell(restarted, code, big))
    assert after_restart == pytest.approx(before_restart, abs=1e-9)


def test_a_score_whose_prediction_left_memory_is_learnt_against_the_logged_one(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(online_live, "REMEMBERED", 1)  # the router remembers the last request only
    engine = _engine(tmp_path, cache, online=PROMPT)
    code, big, _, learnt = _expected(tmp_path, engine)
    with TestClient(create_app(engine)) as client:
        forgotten, _latest = _post(client, CODE).json(), _post(client, CODE).json()
        assert engine.router.online is not None and engine.router.online.prediction(forgotten["id"]) is None
        start = _cell(engine, code, big)
        assert _feedback(client, forgotten["id"], 0.0).status_code == 200
        assert _moved(start, _cell(engine, code, big)) == pytest.approx((learnt, 1.0 - learnt), abs=1e-9)


# The decisions table of a log written before the ``predicted`` column (sessions 7 to 10).
OLD_SCHEMA = """
CREATE TABLE decisions (
    id TEXT PRIMARY KEY, time REAL NOT NULL, model TEXT NOT NULL, expert TEXT NOT NULL, category TEXT,
    confidence REAL, reason TEXT, fallback_from TEXT, status TEXT NOT NULL, latency_s REAL,
    prompt_tokens INTEGER, completion_tokens INTEGER, map_version INTEGER, cascade TEXT, prompt TEXT,
    completion TEXT
);
"""


def test_an_older_log_gains_the_column_and_a_null_prediction_counts_as_the_category_mean(
    tmp_path: Path, cache: Path
) -> None:
    path = decision_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO decisions VALUES ('old-1', ?, 'coserve', 'big', 'code', 0.9, 'routed', NULL, '200', 0.1,"
            " 3, 4, 0, NULL, NULL, NULL)",
            (time.time(),),
        )
    engine = _engine(tmp_path, cache, online=PROMPT)
    online = engine.router.online
    assert online is not None
    code, big = online.categories.index("code"), online.experts.index("big")
    with TestClient(create_app(engine)) as client:
        start = _cell(engine, code, big)
        assert _feedback(client, "old-1", 0.0).status_code == 200
        # no prediction logged: the score counts as for a prompt predicted at code's mean, 0.5 as it is
        assert _moved(start, _cell(engine, code, big)) == pytest.approx((0.5, 0.5), abs=1e-12)
        new = _post(client, CODE).json()
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT id, predicted FROM decisions").fetchall())
    assert rows["old-1"] is None and read_prediction(rows[new["id"]]) is not None


def test_retention_prunes_rows_with_a_prediction_as_before(tmp_path: Path) -> None:
    db, now = tmp_path / "decisions.db", time.time()
    logged = encode_prediction({"small": 0.25, "mid": 0.5, "big": 0.75})

    def row(request_id: str, at: float) -> DecisionRow:
        return DecisionRow(
            request_id, at, "coserve", "big", "code", 0.9, "routed", None, "200", 0.1, 3, 4, 0, None, logged
        )

    writer = DecisionLog(db).start()
    writer.record(row("old", now - 2 * 86400.0))  # two days old
    writer.record(row("new", now))
    writer.close()
    log = DecisionLog(db, retention=Retention(max_age_s=86400.0, interval_s=3600.0)).start()  # prunes at start
    log.flush()
    assert log.pruned == 1 and log.kept == 1
    assert log.feedback_once("old", 1.0).result(10) == ("unknown", None, "", None)  # pruned, prediction too
    assert log.feedback_once("new", 1.0).result(10) == ("stored", "code", "big", 0.75)
    log.close()


def test_the_clusters_owner_learns_a_score_against_the_rows_prediction(tmp_path: Path, cache: Path) -> None:
    service = DecisionLogService(str(_online_library(tmp_path, online=PROMPT)))
    owner = service.online
    assert owner is not None
    live = owner.live
    code, big = live.categories.index("code"), live.experts.index("big")
    offline = float(live.router.offline[code, big])
    scores = {"small": 0.125, "mid": 0.375, "big": offline - 0.25}  # big predicted 0.25 under code's mean
    row = DecisionRow(
        "r1", time.time(), "coserve", "big", "code", 0.9, "trained", None, "200", 0.1, 3, 4, 0, None,
        json.dumps(scores),
    )  # fmt: skip
    start = (float(live.router.posterior.alpha[code, big]), float(live.router.posterior.beta[code, big]))

    async def run() -> Any:
        assert await service.write([row]) == 1  # no replica ever sent this prediction (no exchange)
        return await service.feedback("r1", 0.0, True)

    outcome = asyncio.run(run())
    assert outcome == ("stored", "code", "big", pytest.approx(offline - 0.25, abs=1e-12))
    # 0.5 less the prompt's offset from its category (-0.25): 0.75
    end = (float(live.router.posterior.alpha[code, big]), float(live.router.posterior.beta[code, big]))
    assert _moved(start, end) == pytest.approx((0.75, 0.25), abs=1e-12)
    # the served row's logged prediction joined the feed-forward mix (prompt_weight 1: the row as it is)
    expected_row = [scores[e] for e in live.experts]
    np.testing.assert_allclose(live.router.recent.rows[-1], expected_row, atol=1e-12)
    service.log.close()


def test_a_logged_prediction_reads_back_exactly_and_anything_else_reads_as_none() -> None:
    scores = {"small": 0.1, "mid": 1 / 3, "big": 0.7000000000000001}
    assert read_prediction(encode_prediction(scores)) == scores  # bit for bit
    assert encode_prediction(None) is None and encode_prediction({}) is None
    for text in (None, "", "not json", "[0.5]", "{}", '{"big": "0.5"}', '{"big": NaN}', '{"big": true}'):
        assert read_prediction(text) is None, text
