"""The cluster's shared API-key quota and decision log on Ray's multi-node test cluster, with two
ingress replicas (``min_replicas=2``) and fake experts: a key's requests-per-minute hold for the
cluster, not per replica; every answered request has one row in the one log file; feedback on a
decision is taken whichever replica served it; a key's spent token budget survives the restart of
the ``quota`` replica (its counters kept in Ray's GCS key-value store); the log's retention prunes
the one file and every ingress's ``/metrics`` reports it. Select with ``-m ray``;
skipped when Ray is absent. Each test runs under an alarm; the cluster is shut down at teardown
however the tests end."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_ray_serve import CLUSTER_TIMEOUT_S, TEST_TIMEOUT_S, _ray_app, _write_files, alarm

from coserve.distributed.ray_app import AppArgs
from coserve.server.auth import hash_key
from coserve.store.log import connect

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

LIMITED, FREE, BUDGETED = "sk-four-a-minute", "sk-free", "sk-twenty-tokens"
RATE = 4  # requests a minute for LIMITED: one refills every 15 s, far longer than a burst takes
BUDGET = 20  # tokens a day for BUDGETED: a few requests spend it
SAVED_AFTER_S = 3.0  # the quota replica writes its counters at most every 0.5 s; the ingress spends at once
PRUNED_ID = "chatcmpl-two-days-old"  # in the log before the application starts; retention (1 day) prunes it
ROWS_WAIT_S = 15.0  # how long the test waits for rows to reach the file (batched twice, 0.2 s each)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The application with two ingress replicas, API keys, and its decision log in a temp file."""
    folder = tmp_path_factory.mktemp("ray-state")
    library, cluster_file = _write_files(folder)
    data = yaml.safe_load(library.read_text())
    log_file = folder / "cluster-decisions.sqlite"
    data["server"] = {
        "api_keys": [
            {"sha256": hash_key(LIMITED), "requests_per_minute": RATE},
            hash_key(FREE),
            {"sha256": hash_key(BUDGETED), "tokens_per_day": BUDGET},
        ],
        "log": {"path": str(log_file), "retention": {"max_age": "1d"}},
    }
    conn = connect(log_file)
    with conn:
        conn.execute(
            "INSERT INTO decisions (id, time, model, expert, status) VALUES (?, ?, 'small', 'small', '200')",
            (PRUNED_ID, time.time() - 2 * 86400),
        )
        conn.execute("INSERT INTO feedback (id, time, score) VALUES (?, ?, 1.0)", (PRUNED_ID, time.time()))
    conn.close()
    library.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    # Both ingress replicas on the proxy's node: Ray's proxy prefers replicas on its own node, so
    # replicas on two nodes would not share the traffic evenly.
    args = AppArgs(library=str(library), cluster=str(cluster_file), min_replicas=2, max_replicas=2, ingress_node="a")
    with _ray_app(args, proxy_on_head=True) as (_, _, url):
        yield {"url": url, "log": log_file}


async def _burst(url: str, key: str, count: int, stream: bool = False) -> list[httpx.Response]:
    body = {"model": "small", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 4}
    async with httpx.AsyncClient(base_url=url, timeout=TEST_TIMEOUT_S) as client:
        calls = [
            client.post(
                "/v1/chat/completions",
                json={**body, "stream": stream and i % 2 == 0},
                headers={"authorization": f"Bearer {key}"},
            )
            for i in range(count)
        ]
        return list(await asyncio.gather(*calls))


SPREAD_BURSTS = 5  # bursts _spread_burst may send before it gives up on reaching both replicas


async def _spread_burst(url: str, key: str, count: int, stream: bool = False) -> list[httpx.Response]:
    """Bursts of ``count`` requests until both ingress replicas have answered some (at most SPREAD_BURSTS):
    Ray's proxy chooses the replica, and with room for many requests at once on each it may send a whole
    short burst to one (seen in a CI rehearsal); every response of every burst is returned."""
    responses: list[httpx.Response] = []
    for _ in range(SPREAD_BURSTS):
        responses += await _burst(url, key, count, stream)
        if len({r.headers.get("x-coserve-ingress") for r in responses}) >= 2:
            break
    return responses


def _answer_id(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        first = next(line for line in response.text.splitlines() if line.startswith("data: "))
        return str(json.loads(first[len("data: ") :])["id"])
    return str(response.json()["id"])


def _rows(path: Path, ids: set[str]) -> dict[str, int]:
    """Rows per id among ``ids`` in the log file, once all of them are there (or the wait is over)."""
    deadline = time.monotonic() + ROWS_WAIT_S
    while True:
        if path.exists():
            with sqlite3.connect(path, timeout=30) as conn:
                found = dict(conn.execute("SELECT id, COUNT(*) FROM decisions GROUP BY id").fetchall())
            counts = {i: int(found.get(i, 0)) for i in ids}
            if all(counts.values()) or time.monotonic() > deadline:
                return counts
        time.sleep(0.2)


def test_a_keys_rate_holds_across_both_ingress_replicas(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        responses = asyncio.run(_burst(served["url"], LIMITED, 2 * RATE + 2))
        after = asyncio.run(_burst(served["url"], LIMITED, 1))[0]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * RATE + [429] * (RATE + 2), [r.text[:200] for r in responses]
    # Both replicas took requests of the key: a count per replica would have let more than RATE through.
    assert len({r.headers["x-coserve-ingress"] for r in responses}) == 2
    for refused in [r for r in responses if r.status_code == 429] + [after]:
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60 // RATE


def test_every_answered_request_has_one_row_in_the_one_log(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        responses = asyncio.run(_spread_burst(served["url"], FREE, 10, stream=True))
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert len({r.headers["x-coserve-ingress"] for r in responses}) == 2  # both replicas answered
        ids = {_answer_id(r) for r in responses}
        assert len(ids) == len(responses)
        assert _rows(served["log"], ids) == dict.fromkeys(ids, 1)


def test_feedback_is_taken_whichever_replica_served_the_decision(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        served_by: dict[str, str] = {}
        feedback_by: dict[str, str] = {}
        with httpx.Client(base_url=served["url"], timeout=TEST_TIMEOUT_S) as client:
            auth = {"authorization": f"Bearer {FREE}"}
            body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            for _ in range(10):
                answer = client.post("/v1/chat/completions", json=body, headers=auth)
                assert answer.status_code == 200, answer.text
                decision = answer.json()["id"]
                served_by[decision] = answer.headers["x-coserve-ingress"]
                score = client.post("/v1/feedback", json={"id": decision, "score": 0.5}, headers=auth)
                assert score.status_code == 200, score.text  # sent at once: the row may be on its way
                feedback_by[decision] = score.headers["x-coserve-ingress"]
            unknown = client.post("/v1/feedback", json={"id": "chatcmpl-nobody", "score": 1.0}, headers=auth)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
        assert any(served_by[d] != feedback_by[d] for d in served_by)  # some went to the other replica
        with sqlite3.connect(served["log"], timeout=30) as conn:
            scores = dict(conn.execute("SELECT id, COUNT(*) FROM feedback GROUP BY id").fetchall())
        assert {d: scores.get(d, 0) for d in served_by} == dict.fromkeys(served_by, 1)


def test_the_dashboard_feed_of_one_replica_shows_the_decisions_of_both(served: dict[str, Any]) -> None:
    async def run() -> tuple[set[str], list[dict[str, Any]]]:
        auth = {"authorization": f"Bearer {FREE}"}
        seen: list[dict[str, Any]] = []
        async with httpx.AsyncClient(base_url=served["url"], timeout=TEST_TIMEOUT_S) as client:
            async with client.stream("GET", "/ui/api/events", headers=auth) as feed:
                assert feed.status_code == 200
                lines = feed.aiter_lines()
                responses = await _spread_burst(served["url"], FREE, 10)
                assert [r.status_code for r in responses] == [200] * len(responses)
                ids = {_answer_id(r) for r in responses}
                assert len({r.headers["x-coserve-ingress"] for r in responses}) == 2  # both replicas served
                deadline = time.monotonic() + ROWS_WAIT_S
                while not ids <= {e["id"] for e in seen} and time.monotonic() < deadline:
                    line = await asyncio.wait_for(anext(lines), ROWS_WAIT_S)
                    if line.startswith("data: "):
                        seen.append(json.loads(line[len("data: ") :]))
        return ids, seen

    with alarm(TEST_TIMEOUT_S):
        ids, seen = asyncio.run(run())
    mine = [e for e in seen if e["id"] in ids]
    assert sorted(e["id"] for e in mine) == sorted(ids)  # every decision of the burst, once
    assert len({e["ingress"] for e in mine}) == 2  # served by both replicas, seen through one stream


def _quota_replicas() -> list[str]:
    import ray

    return [str(a["name"]) for a in ray.util.list_named_actors(all_namespaces=True) if "#quota#" in a["name"]]


def test_a_spent_token_budget_survives_the_quota_replicas_restart(served: dict[str, Any]) -> None:
    import ray
    from ray import serve

    quota = serve.get_deployment_handle("quota", app_name="coserve")
    digest = hash_key(BUDGETED)
    with alarm(CLUSTER_TIMEOUT_S):
        statuses = []
        while not statuses or statuses[-1] == 200:  # spend the budget (a few requests)
            statuses.append(asyncio.run(_burst(served["url"], BUDGETED, 1))[0].status_code)
            assert len(statuses) <= BUDGET, statuses
        time.sleep(SAVED_AFTER_S)
        spent = quota.used.remote(digest).result()
        killed = _quota_replicas()
        assert len(killed) == 1, killed
        ray.kill(ray.get_actor(killed[0], namespace="serve"), no_restart=True)
        during: list[int] = []
        while True:  # 503 quota_unavailable while the replica restarts (fail closed), then the answer
            answer = asyncio.run(_burst(served["url"], BUDGETED, 1))[0]
            if answer.status_code != 503:
                break
            assert answer.json()["error"]["code"] == "quota_unavailable" and answer.headers["retry-after"]
            during.append(answer.status_code)
            time.sleep(0.5)
        replaced = _quota_replicas()
        after = quota.used.remote(digest).result()
    assert statuses[-1] == 429 and statuses.count(200) >= 1
    assert killed[0] not in replaced and len(replaced) == 1  # a new replica
    # A reset counter would have served the request (200): the budget is still spent.
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "token_budget_exceeded"
    assert after == spent >= BUDGET


def test_retention_prunes_the_one_log_and_ingresses_report_it(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        with httpx.Client(base_url=served["url"], timeout=TEST_TIMEOUT_S) as client:
            auth = {"authorization": f"Bearer {FREE}"}
            pruned = client.post("/v1/feedback", json={"id": PRUNED_ID, "score": 1.0}, headers=auth)
            scrapes = [client.get("/metrics").text.splitlines() for _ in range(4)]
        assert pruned.status_code == 404 and pruned.json()["error"]["code"] == "request_not_found"
        assert all("coserve_decision_log_pruned_total 1.0" in lines for lines in scrapes)
        assert all(any(line.startswith("coserve_decision_log_rows ") for line in lines) for lines in scrapes)
        with sqlite3.connect(served["log"], timeout=30) as conn:
            left = conn.execute("SELECT COUNT(*) FROM feedback WHERE id = ?", (PRUNED_ID,)).fetchone()[0]
            left += conn.execute("SELECT COUNT(*) FROM decisions WHERE id = ?", (PRUNED_ID,)).fetchone()[0]
        assert left == 0
