"""The placement controller on Ray's multi-node test cluster (two raylets on this host, fake experts,
two ingress replicas): the admission bounds hold for the cluster, each ingress replica enforcing its
share; and the controller's state survives its replica's restart: after a traffic drift has moved an
expert and more live counts arrived, the ``placement`` replica is killed, and the one Ray Serve
starts resumes from Ray's GCS key-value store (the placement after the move, the version one step
on, never back, the reason and time of the last change, the live counts, which it then reads from
the decision log). Select with ``-m ray``;
skipped when Ray is absent. Each test runs under an alarm; the cluster is shut down however they end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import yaml
from test_ray_live import _answer, _experts, _files, _health_until
from test_ray_serve import CLUSTER_TIMEOUT_S, TEST_TIMEOUT_S, _ray_app, alarm

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SAVED_AFTER_S = 3.0  # the controller writes its live counts after each tick (every second)
PER_EXPERT = 4  # the library's max_pending_per_expert: 2 for each of the two ingress replicas
SLOW = "coder"  # 8 tokens at 0.3 s: each request holds its admission for about 2.4 s


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The application with two ingress replicas (both on the proxy's node, a) and a slow coder."""
    args = _files(tmp_path_factory.mktemp("ray-controller"), node_mib=64)  # a: big + coder; b: coder + small
    library = yaml.safe_load(open(str(args.library), encoding="utf-8"))
    next(e for e in library["experts"] if e["name"] == SLOW)["options"]["token_delay"] = 0.3
    library["server"] = {"max_pending_per_expert": PER_EXPERT}
    with open(str(args.library), "w", encoding="utf-8") as out:
        yaml.safe_dump(library, out, sort_keys=False)
    with _ray_app(replace(args, min_replicas=2, max_replicas=2), proxy_on_head=True) as (_, _, base):
        yield base


async def _burst(base: str, model: str, count: int) -> list[httpx.Response]:
    body = {"model": model, "messages": [{"role": "user", "content": "one two"}], "max_tokens": 8}
    async with httpx.AsyncClient(base_url=base, timeout=TEST_TIMEOUT_S) as client:
        return list(await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(count))))


def _placement_replicas() -> list[str]:
    import ray

    return [str(a["name"]) for a in ray.util.list_named_actors(all_namespaces=True) if "#placement#" in a["name"]]


def _kill_placement_replica() -> str:
    """Kill the placement deployment's one replica actor (Ray Serve starts another); its name."""
    import ray

    names = _placement_replicas()
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def test_the_controller_resumes_its_placement_version_and_counts_after_a_restart(url: str) -> None:
    with alarm(CLUSTER_TIMEOUT_S):
        for _ in range(24):  # only big asked: the drift adds a replica of big on b
            assert _answer(url, "big")[0] == "200"
        moved = _health_until(url, lambda h: _experts(h, "b") == ["big", "small"] and h["placement"]["reason"])
        assert _experts(moved, "b") == ["big", "small"], moved["placement"]
        for _ in range(5):  # live counts of the new window
            assert _answer(url, "small")[0] == "200"
        # big's last requests may be counted after the re-plan: the counts are what the window holds.
        before = _health_until(url, lambda h: h["placement"]["live_counts"].get("small") == 5)
        time.sleep(SAVED_AFTER_S)
        counts = httpx.get(f"{url}/health", timeout=30).json()["placement"]["live_counts"]
        killed = _kill_placement_replica()
        after = _health_until(url, lambda h: h["placement"]["version"] != before["placement"]["version"])
        replaced = _placement_replicas()
        answer = _answer(url, "big")
        big_after = counts.get("big", 0) + 1
        health_after = _health_until(url, lambda h: h["placement"]["live_counts"].get("big") == big_after)
        from_log = _health_until(url, lambda h: h["placement"]["live_counts_from"] == "decision log")
    assert moved["placement"]["reason"].startswith("traffic drifted")
    assert counts["small"] == 5 and set(counts) <= {"big", "small"}
    assert killed not in replaced and len(replaced) == 1  # a new replica
    assert after["placement"]["version"] == before["placement"]["version"] + 1  # one step on, never back
    assert after["placement"]["reason"] == before["placement"]["reason"]
    assert after["placement"]["changed_at"] == before["placement"]["changed_at"] is not None
    assert after["placement"]["live_counts"] == counts
    assert (_experts(after, "a"), _experts(after, "b")) == (["big", "coder"], ["big", "small"])
    assert answer[0] == "200"
    assert health_after["placement"]["live_counts"] == {**counts, "big": counts.get("big", 0) + 1}
    # the restarted controller reads the window's counts from the decision log (its rows made since the
    # last plan: the 5 of small; big's just before the re-plan may fall either side, the last one not)
    assert from_log["placement"]["live_counts_from"] == "decision log"
    assert from_log["placement"]["live_counts"]["small"] == 5 and from_log["placement"]["live_counts"]["big"] >= 1


def test_each_ingress_replica_admits_its_share_of_the_bound(url: str) -> None:
    # After the restart test (its requests and these stay under the 20 that make a drift window).
    with alarm(TEST_TIMEOUT_S):
        bounds: dict[str, dict[str, int]] = {}
        for _ in range(40):  # /health of both replicas (the proxy picks one per request)
            health = httpx.get(f"{url}/health", timeout=30)
            admission = health.json()["admission"]
            bounds[health.headers["x-coserve-ingress"]] = {k: v for k, v in admission.items() if k.startswith("max")}
            if len(bounds) == 2:
                break
        responses = asyncio.run(_burst(url, SLOW, 3 * PER_EXPERT))
    # 64 (the default max_pending) and PER_EXPERT split in two: the cluster holds the library's bounds.
    assert list(bounds.values()) == [{"max_pending": 32, "max_pending_per_expert": PER_EXPERT // 2}] * 2
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and 1 <= statuses.count(200) <= PER_EXPERT, statuses
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 429)
