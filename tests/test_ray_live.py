"""Live re-placement on Ray's multi-node test cluster (two raylets on this host, fake experts): a node
killed under traffic has its experts re-placed on the survivor and gets experts back when it
returns; a traffic drift moves an expert two-phase while requests flow. Every request sent during a
change must end with 200, a complete stream (with or without a clean error event), or 429/503 with
Retry-After: none lost.

Select with ``-m ray``; skipped with the reason when Ray Serve is not installed. Each test runs
under an alarm and its cluster is shut down however it ends. Ray's node health checks are made
faster here (a node is declared dead after about 4-8 s instead of Ray's default of about 15 s).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import MiB, library_data
from test_ray_serve import CLUSTER_TIMEOUT_S, _ray_app, alarm

from coserve.distributed.ray_app import AppArgs, node_resources

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

FAST_HEALTH_CHECKS = {
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 2000,
    "health_check_failure_threshold": 4,
}
ALLOWED = {"200", "stream_done", "stream_error", "503+retry", "429+retry"}
CHANGE_TIMEOUT_S = 45  # a re-plan seen in /health after a node left, joined, or traffic drifted


def _files(folder: Path, node_mib: int) -> AppArgs:
    data = library_data()
    for spec in data["experts"]:
        spec["options"]["token_delay"] = 0.03  # 8 tokens: about 0.25 s a request, so some are in flight
    library = folder / "library.yaml"
    library.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cluster = folder / "cluster.yaml"
    nodes = [{"name": "a", "ram": node_mib * MiB}, {"name": "b", "ram": node_mib * MiB}]
    # The fakes take the same time per request whatever their size (token_delay), so say so: the
    # planner would otherwise estimate their work from their weights' bytes.
    same_work = {spec["name"]: {"seconds_per_request": 0.25} for spec in data["experts"]}
    cluster.write_text(yaml.safe_dump({"nodes": nodes, "experts": same_work}), encoding="utf-8")
    # The ingress and the HTTP proxy stay on the head node: a node killed is an expert host's.
    return AppArgs(library=str(library), cluster=str(cluster), max_replicas=1, ingress_node="a")


async def _ask(client: httpx.AsyncClient, model: str, stream: bool) -> tuple[str, str | None]:
    """How one request ended (see ALLOWED; anything else is a lost request) and the node that answered."""
    body = {"model": model, "messages": [{"role": "user", "content": "one two"}], "max_tokens": 8, "stream": stream}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            raw = (await response.aread()).decode()
    except httpx.HTTPError as exc:
        return f"lost: {type(exc).__name__}", None
    node = response.headers.get("x-coserve-node")
    if response.status_code in (429, 503):
        error = json.loads(raw)["error"]
        return (f"{response.status_code}+retry" if response.headers.get("retry-after") and error["code"] else raw), None
    if response.status_code != 200:
        return f"lost: {response.status_code} {raw[:200]}", node
    if not stream:
        return ("200" if json.loads(raw)["choices"][0]["message"]["content"] else f"lost: {raw[:200]}"), node
    frames = [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]
    if frames[-1:] != ["[DONE]"]:
        return f"lost: {raw[-200:]}", node
    return ("stream_error" if any('"error"' in f for f in frames[:-1]) else "stream_done"), node


class Traffic:
    """Bounded concurrent traffic (``workers`` requests at a time) over ``models``, in a thread of its
    own (the test's thread adds and removes Ray nodes, which Ray allows only there), until stopped."""

    def __init__(self, url: str, models: list[str], workers: int = 4):
        self.url, self.models, self.workers = url, models, workers
        self.outcomes: list[tuple[str, str, str | None]] = []  # (model, outcome, node)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, index: int) -> None:
        i = index
        while not self.stop.is_set():
            model = self.models[i % len(self.models)]
            outcome, node = await _ask(client, model, stream=i % 3 == 0)
            self.outcomes.append((model, outcome, node))
            i += self.workers
            await asyncio.sleep(0.02)

    def lost(self) -> list[tuple[str, str, str | None]]:
        return [o for o in self.outcomes if o[1] not in ALLOWED]


def _health_until(url: str, check: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Poll /health until ``check`` holds, at most CHANGE_TIMEOUT_S (the alarm bounds it too)."""
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while True:
        health: dict[str, Any] = httpx.get(f"{url}/health", timeout=30).json()
        if check(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.5)


def _answer(url: str, model: str) -> tuple[str, str | None]:
    async def one() -> tuple[str, str | None]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await _ask(client, model, stream=False)

    return asyncio.run(one())


def _experts(health: dict[str, Any], node: str) -> list[str]:
    return list(health["nodes"][node]["experts"])


def test_a_killed_node_has_its_experts_re_placed_and_gets_experts_back_when_it_returns(tmp_path: Path) -> None:
    args = _files(tmp_path, node_mib=32)  # a: big alone; b: coder + small (tests/test_placement_controller.py)
    with (
        _ray_app(args, proxy_on_head=True, system_config=FAST_HEALTH_CHECKS) as (cluster, node_b, url),
        alarm(CLUSTER_TIMEOUT_S),
    ):
        start = _health_until(url, lambda h: True)
        with Traffic(url, ["coserve", "big", "small", "coder"]) as traffic:
            time.sleep(1.0)
            cluster.remove_node(node_b, allow_graceful=False)
            moved = _health_until(
                url, lambda h: _experts(h, "a") == ["big", "coder", "small"] and h["placement"]["reason"]
            )
            after_kill = [_answer(url, "small"), _answer(url, "coder")]
            cluster.add_node(num_cpus=1, resources=node_resources("b"))
            back = _health_until(url, lambda h: h["placement"]["reason"] == "nodes joined: b")
            after_return = _answer(url, "big")
    assert (_experts(start, "a"), _experts(start, "b")) == (["big"], ["coder", "small"])
    assert _experts(moved, "a") == ["big", "coder", "small"] and _experts(moved, "b") == []
    assert moved["placement"]["reason"] == "nodes left: b" and moved["placement"]["version"] > 1
    assert after_kill == [("200", "a"), ("200", "a")]  # b's experts answer from the survivor
    # Back: the plan moves big to b again (coder and small stay on a, pinned there).
    assert (_experts(back, "a"), _experts(back, "b")) == (["coder", "small"], ["big"])
    assert after_return == ("200", "b")
    assert traffic.lost() == [], traffic.outcomes
    assert len(traffic.outcomes) >= 8 and any(o[1] == "200" for o in traffic.outcomes)


def test_traffic_drift_moves_an_expert_two_phase_while_requests_flow(tmp_path: Path) -> None:
    args = _files(tmp_path, node_mib=64)  # a: big + coder; b: coder + small (coder split)
    with _ray_app(args, proxy_on_head=True) as (_, _, url), alarm(CLUSTER_TIMEOUT_S):
        start = _health_until(url, lambda h: True)
        with Traffic(url, ["big"]) as traffic:
            moved = _health_until(url, lambda h: _experts(h, "b") == ["big", "small"] and h["placement"]["reason"])
            seen = len(traffic.outcomes)
            while len(traffic.outcomes) < seen + 12:  # big from both nodes now
                time.sleep(0.1)
        nodes_after = {node for _, _, node in traffic.outcomes[seen:]}
    assert (_experts(start, "a"), _experts(start, "b")) == (["big", "coder"], ["coder", "small"])
    assert _experts(moved, "a") == ["big", "coder"] and _experts(moved, "b") == ["big", "small"]
    assert moved["placement"]["reason"].startswith("traffic drifted")
    assert nodes_after == {"a", "b"}  # both replicas of big serve (ACTIVE on both; least in flight)
    assert traffic.lost() == [], traffic.outcomes
