"""Expert-host replicas on one Ray node that carries two cluster-file nodes (as local ``coserve serve
--ray`` starts them), on Ray's test cluster with fake experts: each replica claims a distinct node
from the placement controller; when one replica's actor is killed, the replacement Ray Serve starts
takes the killed replica's node (whatever local rank Ray Serve gives it) and serves that node's
experts, and no two live replicas hold one node. Select with ``-m ray``; skipped when Ray is absent.
The test runs under an alarm; the cluster is shut down however it ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_ray_live import _answer, _files
from test_ray_serve import CLUSTER_TIMEOUT_S, TEST_TIMEOUT_S, _host_health, _ray_app, alarm

from coserve.distributed.ray_placement import PLACEMENT

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPLACED_WITHIN_S = 60  # Ray Serve notices the dead replica and starts and readies another


def _claims() -> dict[str, str]:
    from ray import serve

    handle = serve.get_deployment_handle(PLACEMENT, app_name="coserve")
    claims: dict[str, str] = handle.host_claims.remote().result(timeout_s=TEST_TIMEOUT_S)
    return claims


def _host_replicas() -> list[str]:
    """The names of the expert-host replica actors alive now."""
    import ray

    names = [str(a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)]
    return sorted(n for n in names if "#expert-host#" in n)


def _until(check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + REPLACED_WITHIN_S
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _replaced(killed: str) -> dict[str, str] | None:
    """The claims once node a's holder is another replica and two host replicas are alive, else None."""
    claims = _claims()
    return claims if claims.get("a") != killed and len(_host_replicas()) == 2 else None


def _answered(url: str, model: str) -> tuple[str, str | None] | None:
    answer = _answer(url, model)
    return answer if answer[0] == "200" else None


def test_a_replacement_host_replica_takes_the_killed_replicas_node(tmp_path: Path) -> None:
    import ray

    args = _files(tmp_path, node_mib=32)  # a: big alone; b: coder + small (tests/test_placement_controller.py)
    with (
        _ray_app(args, node_b=False, head_nodes=("a", "b"), proxy_on_head=True) as (_, _, url),
        alarm(CLUSTER_TIMEOUT_S),
    ):
        before = _claims()
        served_before = [_answer(url, "big"), _answer(url, "small")]
        killed = before["a"]
        ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)
        after = _until(lambda: _replaced(killed))
        big_after = _until(lambda: _answered(url, "big"))
        small_after = _answer(url, "small")
        live = _host_replicas()
        experts = {node: sorted(_host_health(node)["experts"]) for node in ("a", "b")}
    assert sorted(before) == ["a", "b"] and before["a"] != before["b"]
    assert served_before == [("200", "a"), ("200", "b")]
    assert after is not None, "no replacement claimed node a"
    assert after["b"] == before["b"] and after["a"] not in (killed, before["b"])
    assert sorted(after.values()) == live  # every live host holds exactly one node, no two the same
    assert big_after == ("200", "a") and small_after == ("200", "b")
    assert experts == {"a": ["big"], "b": ["coder", "small"]}
