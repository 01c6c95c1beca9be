"""The Ray Serve wiring (coserve.distributed.ray_*): replica choice with plain numbers, and the whole
application on Ray's multi-node test cluster (two raylets on this host, each with its own
``coserve-node-<node>`` resource) with fake experts.

Select with ``-m ray``; skipped with the reason when Ray Serve (``coserve[ray]``) is not installed.
Every cluster test runs under an alarm, talks to 127.0.0.1 only, and the cluster is shut down at
teardown however the tests end.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coserve.distributed.ray_app import AppArgs, node_resource, placed_experts
from coserve.distributed.ray_choice import DOWN_FOR_S, HostBook, HostView, choose_host
from coserve.distributed.ray_host import error_record, raise_record
from coserve.distributed.ray_run import missing_nodes, ray_config
from coserve.errors import ConfigError, ExpertFailed, TooManyRequests
from coserve.types import Tier
from tests.conftest import MiB, library_data

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CLUSTER_TIMEOUT_S = 240  # starting two raylets and the application on a busy 2-core machine
TEST_TIMEOUT_S = 60


# -- replica choice, with plain numbers ---------------------------------------------------------
def test_choice_prefers_active_then_ram_then_least_loaded() -> None:
    busy_active = HostView("a", Tier.ACTIVE, in_flight=9)
    idle_ram = HostView("b", Tier.RAM, in_flight=0)
    idle_disk = HostView("c", Tier.DISK, in_flight=0)
    assert choose_host([idle_disk, idle_ram, busy_active]) == "a"  # ACTIVE first, even when busier
    assert choose_host([idle_disk, idle_ram]) == "b"  # else RAM
    assert choose_host([HostView("c", Tier.DISK, 3), HostView("d", Tier.DISK, 1)]) == "d"  # else least loaded
    assert choose_host([HostView("e", Tier.DISK, 1), HostView("d", Tier.DISK, 1)]) == "d"  # tie: by name


def test_choice_never_picks_a_host_that_cannot_serve() -> None:
    assert choose_host([HostView("a", None, 0), HostView("b", Tier.DISK, 50)]) == "b"
    assert choose_host([HostView("a", None, 0)]) is None
    assert choose_host([]) is None


def test_book_tracks_placement_reports_and_failures() -> None:
    book = HostBook({"a": ["x", "y"], "b": ["y"]})
    assert book.choose("x", now=0.0) == "a"
    assert book.choose("z", now=0.0) is None  # placed nowhere
    book.report("b", {"y": "active"})
    book.report("a", {"x": "ram", "y": "ram"})
    assert book.choose("y", now=0.0) == "b"
    book.fail("b", now=100.0)
    assert book.choose("y", now=100.0 + DOWN_FOR_S - 0.1) == "a"  # b is skipped while down
    assert book.choose("y", now=100.0 + DOWN_FOR_S) == "b"  # and tried again after
    assert book.hosting("y") == ["a", "b"]


def test_error_record_round_trip_keeps_class_status_and_retry_after() -> None:
    with pytest.raises(TooManyRequests) as caught:
        raise_record(error_record(TooManyRequests("busy", retry_after=7, code="queue_full")))
    assert (caught.value.status, caught.value.retry_after, caught.value.code) == (429, 7, "queue_full")
    assert caught.value.body()["error"]["message"] == "busy"
    with pytest.raises(ExpertFailed):
        raise_record({"error": "NoSuchError", "message": "m", "param": None, "code": None, "retry_after": None})


def test_app_args_and_config() -> None:
    with pytest.raises(ConfigError, match="unknown key 'replicas'"):
        AppArgs.from_dict({"replicas": 2})
    with pytest.raises(ConfigError, match="min_replicas"):
        AppArgs.from_dict({"min_replicas": 3, "max_replicas": 2})
    config = ray_config(AppArgs(library="/x/lib.yaml"), "0.0.0.0", 8000)
    app = config["applications"][0]
    assert app["import_path"] == "coserve.distributed.ray_app:build_app"
    assert app["args"]["library"] == "/x/lib.yaml" and app["args"]["cluster"] is None
    assert missing_nodes(["a", "b"], {"coserve-node-a": 1.0, "CPU": 2.0}) == ["b"]


# -- the application on a two-node test cluster --------------------------------------------------


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    def expire(*_: Any) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_files(folder: Path) -> tuple[Path, Path]:
    data = library_data()
    data["experts"][1]["options"]["fail_after_tokens"] = 3  # coder fails mid-answer
    data["experts"][0]["options"]["token_delay"] = 0.01
    library = folder / "library.yaml"
    library.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    # big (30 MiB) fits a 32 MiB node only alone, so it gets one node and small + coder the other.
    cluster = folder / "cluster.yaml"
    nodes = [{"name": "a", "ram": 32 * MiB}, {"name": "b", "ram": 32 * MiB}]
    cluster.write_text(yaml.safe_dump({"nodes": nodes}), encoding="utf-8")
    return library, cluster


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The application on a two-node Ray test cluster: base URL and the planned placement."""
    ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    from ray import serve
    from ray.cluster_utils import Cluster

    from coserve.distributed.ray_app import build_app

    library, cluster_file = _write_files(tmp_path_factory.mktemp("ray"))
    args = AppArgs(library=str(library), cluster=str(cluster_file), max_replicas=1)
    _, placed = placed_experts(args)
    port = _free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {node_resource("a"): 1}, "include_dashboard": False},
    )
    try:
        with alarm(CLUSTER_TIMEOUT_S):
            cluster.add_node(num_cpus=1, resources={node_resource("b"): 1})
            ray.init(address=cluster.address, log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(args.to_dict()), name="coserve", route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "placed": placed}
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _node_of(placed: dict[str, list[str]], expert: str) -> str:
    (node,) = [n for n, experts in placed.items() if expert in experts]
    return node


def _host_health(node: str) -> dict[str, Any]:
    from ray import serve

    handle = serve.get_deployment_handle(f"expert-host-{node}", app_name="coserve")
    result: dict[str, Any] = handle.health.remote().result(timeout_s=TEST_TIMEOUT_S)
    return result


def _chat(url: str, model: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 6, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TEST_TIMEOUT_S)


def test_the_plan_puts_big_alone(served: dict[str, Any]) -> None:
    placed = served["placed"]
    assert sorted(map(sorted, placed.values())) == [["big"], ["coder", "small"]]


def test_routed_request_is_answered_by_the_host_placed_for_its_expert(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        response = _chat(served["url"], "coserve", "solve the equation 5 x plus 2 equals 12")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "big" and body["coserve"]["category"] == "math"
        assert body["choices"][0]["message"]["content"].startswith("big says:")
        assert response.headers["x-coserve-expert"] == "big"
        home = _node_of(served["placed"], "big")
        other = ({"a", "b"} - {home}).pop()
        assert _host_health(home)["experts"]["big"]["tier"] == "active"  # it ran there
        assert "big" not in _host_health(other)["experts"]  # and the other host does not serve it


def test_pinned_expert_on_the_other_node(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        response = _chat(served["url"], "small", "hello there")
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "small"
        assert response.json()["choices"][0]["message"]["content"].startswith("small says:")
        assert _node_of(served["placed"], "small") != _node_of(served["placed"], "big")
        assert _host_health(_node_of(served["placed"], "small"))["experts"]["small"]["tier"] == "active"


def _events(url: str, model: str, text: str) -> list[Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 6, "stream": True}
    events: list[Any] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=TEST_TIMEOUT_S) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_streaming_through_the_handles_keeps_the_frames(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        events = _events(served["url"], "small", "one two three")
    assert events[-1] == "[DONE]"
    first, *middle, finish, _ = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["coserve"]["expert"] == "small" and first["model"] == "small"
    text = "".join(e["choices"][0]["delta"]["content"] for e in middle)
    # the fake answers "<expert> says:" and the prompt's words, up to max_tokens (6) words
    assert text.split() == ["small", "says:", "one", "two", "three", "one"]
    assert finish["choices"][0]["finish_reason"] == "length"


def test_errors_keep_the_openai_body(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        response = _chat(served["url"], "coder", "write a python function")  # fails after 3 tokens
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "expert_failed"
        assert "coder" in error["message"]
        events = _events(served["url"], "coder", "write a python function")
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "expert_failed"  # the clean error event that ends it
        bad = _chat(served["url"], "no-such-expert", "hi")
        assert bad.status_code == 404 and bad.json()["error"]["param"] == "model"


def test_health_and_models_show_the_cluster(served: dict[str, Any]) -> None:
    with alarm(TEST_TIMEOUT_S):
        health = httpx.get(f"{served['url']}/health", timeout=TEST_TIMEOUT_S).json()
        models = httpx.get(f"{served['url']}/v1/models", timeout=TEST_TIMEOUT_S).json()
    assert health["status"] == "ok"
    assert set(health["nodes"]) == {"a", "b"}
    assert health["experts"]["big"]["nodes"].keys() == {_node_of(served["placed"], "big")}
    assert [m["id"] for m in models["data"]] == ["coserve", "small", "coder", "big"]
