"""The placement controller's state survives its replica's restart, on Ray's multi-node test cluster
(two raylets on this host, fake experts): after a traffic drift has moved an expert and more live
counts arrived, the ``placement`` replica is killed; Ray Serve starts a new one, which resumes from
Ray's GCS key-value store: the placement after the move, the version one step on (never back), the
reason of the last change and the live counts. Select with ``-m ray``; skipped when Ray is absent.
The test runs under an alarm and its cluster is shut down however it ends."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from test_ray_live import _answer, _experts, _files, _health_until
from test_ray_serve import CLUSTER_TIMEOUT_S, _ray_app, alarm

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SAVED_AFTER_S = 3.0  # the controller writes its live counts after each tick (every second)


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


def test_the_controller_resumes_its_placement_version_and_counts_after_a_restart(tmp_path: Path) -> None:
    args = _files(tmp_path, node_mib=64)  # a: big + coder; b: coder + small (tests/test_ray_live.py)
    with _ray_app(args, proxy_on_head=True) as (_, _, url), alarm(CLUSTER_TIMEOUT_S):
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
