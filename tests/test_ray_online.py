"""The cluster's one online router on Ray's multi-node test cluster: two ingress replicas
(``min_replicas=2``), a trained router and fake experts. Feedback sent to either replica moves the map
that both route with, at the owner's versions; ``/metrics`` on an ingress shows the realised cost over
both replicas' traffic (the decision log's answered rows); the state is saved by the owner in the one
log file. Select with ``-m ray``; skipped when Ray is absent."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_online_serving import _online_library
from test_ray_serve import TEST_TIMEOUT_S, _ray_app, _write_files, alarm
from test_trained_routing import CODE, trained_dir  # noqa: F401  (a fixture)

from coserve.distributed.ray_app import AppArgs

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PARAMS = {"small": 1.0, "mid": 3.0, "big": 7.0}  # the experts' params_b (test_trained_routing._library)
SETTLE_S = 20.0  # how long the test waits for rows and snapshots to travel (0.2-0.5 s each, on a busy machine)


def _ask(client: httpx.Client) -> tuple[str, str, str]:
    body = {"model": "coserve", "messages": [{"role": "user", "content": CODE}], "max_tokens": 3}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    # The map's choice: the first expert tried. An expert the map did not use at start (mid) may have
    # no replica yet: the engine then falls back (to big) and names it in ``fallback_from``.
    field = answer.json()["coserve"]
    chosen = (field.get("fallback_from") or [field["expert"]])[0]
    return answer.json()["id"], chosen, answer.headers["x-coserve-ingress"]


def _until(check: Any, what: Any) -> Any:
    deadline = time.monotonic() + SETTLE_S
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, what()
            return value
        time.sleep(0.3)


def _ingress_samples(family: Any) -> list[Any]:
    """The ingress's own samples of a metric (the hosts' come merged in, labelled with their node)."""
    return [sample for sample in family.samples if "node" not in sample.labels]


def _per_replica(client: httpx.Client, path: str) -> dict[str, httpx.Response]:
    """One answer to GET ``path`` from each ingress replica (asked until both answered)."""
    seen: dict[str, httpx.Response] = {}

    def both() -> bool:
        answer = client.get(path)
        seen[answer.headers["x-coserve-ingress"]] = answer
        return len(seen) == 2

    _until(both, lambda: f"both replicas answer {path}")
    return seen


@pytest.mark.usefixtures("trained_dir")  # `coserve train` on separable data, in tmp_path/router
def test_one_online_router_for_both_ingress_replicas(tmp_path: Path) -> None:
    library = _online_library(tmp_path)  # category mode, 2 pseudo-counts, no exploring, budget 7B
    data = yaml.safe_load(library.read_text())
    log_file = tmp_path / "cluster-decisions.sqlite"
    data["server"] = {"log": {"path": str(log_file)}}
    library.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "ray").mkdir()
    _, cluster_file = _write_files(tmp_path / "ray")
    args = AppArgs(library=str(library), cluster=str(cluster_file), min_replicas=2, max_replicas=2, ingress_node="a")
    with (
        _ray_app(args, proxy_on_head=True) as (_, _, url),
        httpx.Client(base_url=url, timeout=TEST_TIMEOUT_S) as client,
    ):
        with alarm(TEST_TIMEOUT_S):
            first = [_ask(client) for _ in range(4)]
            assert {expert for _, expert, _ in first} == {"big"}  # the trained map sends code to big
            # Two zeros on (code, big): 2/4 = 0.5 < mid's 0.6, whichever replica takes each score.
            for decision, _, _ in first[:2]:
                assert client.post("/v1/feedback", json={"id": decision, "score": -1.0}).status_code == 200
            moved: dict[str, str] = {}

            def both_moved() -> bool:
                _, expert, replica = _ask(client)
                moved[replica] = expert
                return len(moved) == 2 and set(moved.values()) == {"mid"}

            _until(both_moved, lambda: f"both replicas route code to mid: {moved}")
            health = _per_replica(client, "/health")
            for answer in health.values():
                online = answer.json()["online"]
                assert online["source"] == "decision-log" and online["owner_reachable"] is True
        with alarm(TEST_TIMEOUT_S):

            def rows() -> list[tuple[str, int]]:
                with sqlite3.connect(log_file, timeout=30) as conn:
                    query = "SELECT expert, map_version FROM decisions WHERE status = '200' ORDER BY rowid"
                    return [(str(e), int(v)) for e, v in conn.execute(query)]

            seen: dict[str, Any] = {}

            def settled() -> bool:
                """The last rows reached the owner and its snapshot both replicas (polled, not slept for:
                on a busy machine that takes longer than any fixed pause)."""
                seen["served"] = served = rows()
                realised = sum(PARAMS[e] for e, _ in served) / len(served)
                seen["metrics"] = []
                for answer in _per_replica(client, "/metrics").values():
                    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
                    (sample,) = _ingress_samples(families["coserve_budget_realised"])
                    (version,) = _ingress_samples(families["coserve_map_version"])
                    seen["metrics"].append((sample.value, version.value))
                # every answered row's cost; one re-solve per score and per served request of either
                # replica: one controller
                return all(
                    value == pytest.approx(realised) and version == 2 + len(served)
                    for value, version in seen["metrics"]
                )

            _until(settled, lambda: f"both replicas' realised cost and map version match the log: {seen}")
            served = seen["served"]
            # Every logged version is one the owner published: the feedback's two re-solves on top of
            # the served requests counted before each decision, never a replica's own sequence.
            assert all(0 <= v <= 2 + len(served) for _, v in served)
            with sqlite3.connect(log_file, timeout=30) as conn:
                (body,) = conn.execute("SELECT body FROM online_state WHERE slot = 1").fetchone()
            saved = json.loads(body)
            assert saved["version"] >= 2 and saved["beta"][1][2] == pytest.approx(2.0, abs=1e-5)  # code, big: 2 zeros
        with alarm(TEST_TIMEOUT_S):
            _restart_the_owner(client, {a.json()["online"]["owner_epoch"] for a in health.values()})


def _restart_the_owner(client: httpx.Client, epochs: set[str]) -> None:
    """Kill the decision-log replica: requests are still answered with the last snapshot; Serve starts
    another, which resumes the saved state (an offline start would send code back to big)."""
    import ray

    assert len(epochs) == 1
    names = [str(a["name"]) for a in ray.util.list_named_actors(all_namespaces=True) if "#decision-log#" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    assert [_ask(client)[1] for _ in range(4)] == ["mid"] * 4  # the last snapshot, owner down or not

    def followed() -> bool:
        return all(a.json()["online"]["owner_epoch"] not in epochs for a in _per_replica(client, "/health").values())

    _until(followed, lambda: "both replicas take the restarted owner's state")
    moved: dict[str, str] = {}

    def both_mid() -> bool:
        _, expert, replica = _ask(client)
        moved[replica] = expert
        return len(moved) == 2

    _until(both_mid, lambda: f"both replicas answer: {moved}")
    assert moved == dict.fromkeys(moved, "mid")
