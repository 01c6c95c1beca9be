"""The Ray Serve wiring (coserve.distributed.ray_*): replica choice with plain numbers, and the whole
application on Ray's multi-node test cluster (two raylets on this host, each with its own
``coserve-node-<node>`` resource) with fake experts.

Select with ``-m ray``; skipped with the reason when Ray Serve (``coserve[ray]``) is not installed.
Every cluster test runs under an alarm, talks to 127.0.0.1 only, and the cluster is shut down at
teardown however the tests end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import HELD_OUT, MiB, library_data
from prometheus_client.parser import text_string_to_metric_families

from coserve.distributed.ray_app import HOSTS, AppArgs, node_resources, placed_experts
from coserve.distributed.ray_choice import DOWN_FOR_S, HostBook, HostView, choose_host
from coserve.distributed.ray_host import error_record, raise_record
from coserve.distributed.ray_run import drain, host_units_short, missing_nodes, ray_config
from coserve.errors import ConfigError, ExpertFailed, TooManyRequests
from coserve.types import Tier

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_TIMEOUT_S = 240  # starting two raylets and the application on a busy 2-core machine
TEST_TIMEOUT_S = 60
# No usage report leaves the machine (Ray sends one unless told not to).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


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
    assert host_units_short(["a", "b"], {"coserve-node-a": 1.0, "coserve-node-b": 1.0, "coserve-host": 1.0}) == 1
    assert host_units_short(["a", "b"], node_resources("a", "b")) == 0


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


# The HTTP proxy's port is chosen here and bound by Ray only after the cluster starts; a port the kernel
# hands out (32768-60999) can be taken in between by one of Ray's own components, which bind port 0
# too ("Failed to bind to address", seen in full-suite runs). So the port comes from a range neither
# the kernel's ephemeral ports nor Ray's worker ports (10002-19999 by default) use.
PROXY_PORTS = range(20000, 32000)


def _free_port() -> int:
    for port in random.sample(PROXY_PORTS, 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PROXY_PORTS}")


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


@contextlib.contextmanager
def _ray_app(
    args: AppArgs,
    *,
    node_b: bool = True,
    proxy_on_head: bool = False,
    system_config: dict[str, Any] | None = None,
    head_nodes: tuple[str, ...] = ("a",),
) -> Iterator[tuple[Any, Any, str]]:
    """The application on a Ray test cluster: node ``a`` (the head), and ``b`` when asked; yields the
    cluster, node b (or None) and the base URL; Serve, the driver and the cluster stop at the end.
    ``system_config``: Ray's own settings for the cluster (e.g. faster node health checks);
    ``head_nodes``: the cluster-file nodes the head carries (several: as local ``serve --ray``)."""
    ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    from ray import serve
    from ray.cluster_utils import Cluster

    from coserve.distributed.ray_app import build_app

    port = _free_port()
    head: dict[str, Any] = {"num_cpus": 2, "resources": node_resources(*head_nodes), "include_dashboard": False}
    if system_config:
        head["_system_config"] = system_config
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        with alarm(CLUSTER_TIMEOUT_S):
            second = cluster.add_node(num_cpus=1, resources=node_resources("b")) if node_b else None
            ray.init(address=cluster.address, log_to_driver=False)
            proxy: dict[str, Any] = {"proxy_location": "HeadOnly"} if proxy_on_head else {}
            serve.start(**proxy, http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(args.to_dict()), name="coserve", route_prefix="/")
        yield cluster, second, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="class")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The application on a two-node Ray test cluster: base URL and the planned placement."""
    library, cluster_file = _write_files(tmp_path_factory.mktemp("ray"))
    args = AppArgs(library=str(library), cluster=str(cluster_file), max_replicas=1)
    _, placed = placed_experts(args)
    with _ray_app(args) as (_, _, url):
        yield {"url": url, "placed": placed}


def _node_of(placed: dict[str, list[str]], expert: str) -> str:
    (node,) = [n for n, experts in placed.items() if expert in experts]
    return node


def _host_health(node: str) -> dict[str, Any]:
    from ray import serve

    handle = serve.get_deployment_handle(HOSTS, app_name="coserve")  # its router: the node's replica
    result: dict[str, Any] = handle.health.remote(node).result(timeout_s=TEST_TIMEOUT_S)
    return result


def _chat(url: str, model: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 6, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TEST_TIMEOUT_S)


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


class TestTwoNodes:
    """Requests through the application on a two-node cluster (one cluster for the class, torn
    down before the tests below start their own)."""

    def test_the_plan_puts_big_alone(self, served: dict[str, Any]) -> None:
        placed = served["placed"]
        assert sorted(map(sorted, placed.values())) == [["big"], ["coder", "small"]]

    def test_routed_request_is_answered_by_the_host_placed_for_its_expert(self, served: dict[str, Any]) -> None:
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

    def test_the_request_router_sends_each_expert_to_its_node(self, served: dict[str, Any]) -> None:
        """One expert-host deployment: Ray Serve's router (ExpertRouter) picks the replica of the node
        the expert is placed on, and the answer says which node it was."""
        with alarm(TEST_TIMEOUT_S):
            answered = {e: _chat(served["url"], e, "hi").headers.get("x-coserve-node") for e in ("big", "small")}
        assert answered == {"big": _node_of(served["placed"], "big"), "small": _node_of(served["placed"], "small")}
        assert answered["big"] != answered["small"]

    def test_pinned_expert_on_the_other_node(self, served: dict[str, Any]) -> None:
        with alarm(TEST_TIMEOUT_S):
            response = _chat(served["url"], "small", "hello there")
            assert response.status_code == 200, response.text
            assert response.json()["model"] == "small"
            assert response.json()["choices"][0]["message"]["content"].startswith("small says:")
            assert _node_of(served["placed"], "small") != _node_of(served["placed"], "big")
            assert _host_health(_node_of(served["placed"], "small"))["experts"]["small"]["tier"] == "active"

    def test_streaming_through_the_handles_keeps_the_frames(self, served: dict[str, Any]) -> None:
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

    def test_errors_keep_the_openai_body(self, served: dict[str, Any]) -> None:
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

    def test_health_and_models_show_the_cluster(self, served: dict[str, Any]) -> None:
        with alarm(TEST_TIMEOUT_S):
            health = httpx.get(f"{served['url']}/health", timeout=TEST_TIMEOUT_S).json()
            models = httpx.get(f"{served['url']}/v1/models", timeout=TEST_TIMEOUT_S).json()
            ui = httpx.get(f"{served['url']}/ui/api/state", timeout=TEST_TIMEOUT_S)
        assert ui.status_code == 200, ui.text  # the dashboard reads the same health shape
        assert {e["name"]: e["nodes"] for e in ui.json()["experts"]}["big"].keys() == {
            _node_of(served["placed"], "big")
        }
        assert health["status"] == "ok"
        assert set(health["nodes"]) == {"a", "b"}
        assert health["experts"]["big"]["nodes"].keys() == {_node_of(served["placed"], "big")}
        assert {n: v["experts"] for n, v in health["nodes"].items()} == served["placed"]
        counts = health["placement"].pop("live_counts")  # what the tests before this one asked
        assert isinstance(counts, dict) and set(counts) <= {"small", "coder", "big"}
        assert health["placement"].pop("live_counts_from") == "decision log"  # it answers: its counts
        assert health["placement"] == {"version": 1, "unplaced": [], "reason": None, "changed_at": None, "error": None}
        big_home = _host_health(_node_of(served["placed"], "big"))
        assert big_home["experts"]["big"]["pinned"] is True  # resident in the plan: pinned in the pool
        assert [m["id"] for m in models["data"]] == ["coserve", "small", "coder", "big"]

    def test_metrics_carry_every_hosts_engine_metrics(self, served: dict[str, Any]) -> None:
        with alarm(TEST_TIMEOUT_S):
            assert _chat(served["url"], "small", "hello").status_code == 200
            text = httpx.get(f"{served['url']}/metrics", timeout=TEST_TIMEOUT_S).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        loads = {(s.labels["node"], s.labels["expert"]) for s in families["coserve_expert_loads"].samples}
        assert ("b" if "small" in served["placed"].get("b", []) else "a", "small") in loads
        assert families["coserve_cluster_hosts_unreachable"].samples[0].value == 0.0
        assert any(s.labels == {"status": "200"} for s in families["coserve_requests"].samples)  # the ingress's

    def test_the_ingress_admits_more_at_once_than_rays_default_and_counts_none_left(
        self, served: dict[str, Any]
    ) -> None:
        """Session 13's walk: the ingress had Ray's default cap of 5 requests at once, so a 6th waited in
        Ray's proxy (not admitted, not logged, not in /health), and a call whose client left while it
        waited in a host's queue left that node's ``in_flight`` at -1. Seven held streams (the host
        runs two, queues five) are all admitted at once; once their clients leave, none is in flight."""
        url = served["url"]
        body = {"model": "small", "messages": [{"role": "user", "content": "one two"}], "max_tokens": 2000}

        async def hold(client: httpx.AsyncClient) -> None:
            async with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as answer:
                async for _ in answer.aiter_lines():
                    pass

        async def health_until(client: httpx.AsyncClient, done: Any) -> dict[str, Any]:
            for _ in range(40):
                health: dict[str, Any] = (await client.get(f"{url}/health")).json()
                if done(health):
                    break
                await asyncio.sleep(0.5)
            return health

        async def scenario() -> tuple[int, dict[str, Any]]:
            async with httpx.AsyncClient(timeout=TEST_TIMEOUT_S) as client:
                streams = [asyncio.create_task(hold(client)) for _ in range(7)]
                busy = await health_until(client, lambda h: h["admission"]["pending"] >= 7)
                for stream in streams:
                    stream.cancel()
                await asyncio.gather(*streams, return_exceptions=True)
                idle = await health_until(
                    client,
                    lambda h: h["admission"]["pending"] == 0 and all(n["in_flight"] == 0 for n in h["nodes"].values()),
                )
                return busy["admission"]["pending"], idle

        with alarm(TEST_TIMEOUT_S):
            most, idle = asyncio.run(scenario())
        assert most == 7
        assert idle["admission"]["pending"] == 0
        assert {node: v["in_flight"] for node, v in idle["nodes"].items()} == {"a": 0, "b": 0}


# -- the CLI ---------------------------------------------------------------------------------------
def test_deploy_writes_the_ray_serve_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coserve.cli import main

    library, cluster = _write_files(tmp_path)
    out = tmp_path / "serve.yaml"
    code = main(["deploy", "--ray-config", str(out), "--library", str(library), "--cluster", str(cluster)])
    assert code == 0
    config = yaml.safe_load(out.read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "coserve.distributed.ray_app:build_app" and app["route_prefix"] == "/"
    assert app["args"]["library"] == str(library.resolve()) and app["args"]["cluster"] == str(cluster.resolve())
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed[:2]) in (["a: big", "b: coder, small"], ["a: coder, small", "b: big"])


def test_serve_ray_without_ray_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from coserve.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    assert main(["serve", "--ray"]) == 2
    assert "pip install 'coserve[ray]'" in capsys.readouterr().err


def test_serve_cluster_without_ray_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    from coserve.cli import main

    assert main(["serve", "--cluster", "c.yaml"]) == 2
    assert "add --ray" in capsys.readouterr().err


def test_the_single_process_path_imports_no_ray() -> None:
    code = (
        "import sys\n"
        "from coserve.cli import build_parser\n"
        "import coserve.server.app, coserve.engine.engine\n"
        "build_parser().parse_args(['serve'])\n"
        "sys.exit(1 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=TEST_TIMEOUT_S).returncode == 0


# -- a node dies mid-run -----------------------------------------------------------------------------
def _fault_files(folder: Path) -> tuple[Path, Path]:
    library, cluster = _write_files(folder)
    data = library_data()
    for spec in data["experts"]:
        spec["options"]["token_delay"] = 0.05  # 12 tokens: about 0.6 s a request, so some are in flight
    library.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return library, cluster


async def _outcome(client: httpx.AsyncClient, model: str, text: str, stream: bool) -> str:
    """How one request ended: "200", "stream_done", "stream_error", "503+retry" / "429+retry", or
    anything else (a lost request)."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 12, "stream": stream}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            raw = (await response.aread()).decode()
    except httpx.HTTPError as exc:
        return f"lost: {type(exc).__name__}"
    if response.status_code in (429, 503):
        error = json.loads(raw)["error"]
        return f"{response.status_code}+retry" if response.headers.get("retry-after") and error["code"] else raw
    if response.status_code != 200:
        return f"lost: {response.status_code} {raw[:200]}"
    if not stream:
        return "200" if json.loads(raw)["choices"][0]["message"]["content"] else f"lost: {raw[:200]}"
    frames = [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]
    if frames[-1:] != ["[DONE]"]:
        return f"lost: {raw[-200:]}"
    return "stream_error" if any('"error"' in f for f in frames[:-1]) else "stream_done"


def test_a_node_killed_mid_run_loses_no_request(tmp_path: Path) -> None:
    library, cluster_file = _fault_files(tmp_path)
    # The ingress and the HTTP proxy stay on the head node: the node killed is an expert host's.
    args = AppArgs(library=str(library), cluster=str(cluster_file), max_replicas=1, ingress_node="a")
    prompts = [("coserve", HELD_OUT["math"]), ("coserve", HELD_OUT["chat"]), ("big", "hi"), ("small", "hi")]
    with _ray_app(args, proxy_on_head=True) as (cluster, node_b, url), alarm(CLUSTER_TIMEOUT_S):

        async def run() -> list[str]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                early = [
                    asyncio.ensure_future(_outcome(client, m, t, stream=i % 3 == 0))
                    for i, (m, t) in enumerate(prompts * 3)
                ]
                await asyncio.sleep(0.3)
                await asyncio.to_thread(cluster.remove_node, node_b, False)
                late = [_outcome(client, m, t, stream=i % 2 == 0) for i, (m, t) in enumerate(prompts * 2)]
                return list(await asyncio.gather(*early, *late))

        outcomes = asyncio.run(run())
    allowed = {"200", "stream_done", "stream_error", "503+retry", "429+retry"}
    assert [o for o in outcomes if o not in allowed] == [], outcomes
    assert len(outcomes) == 20
    # Sent after node b was gone: a request pinned to an expert placed only on b cannot be served
    # anywhere, and says when to retry; one pinned to a's expert is answered.
    _, placed = placed_experts(args)
    late_outcomes = outcomes[12:]
    for (model, _), outcome in zip(prompts * 2, late_outcomes, strict=True):
        if model in placed.get("b", []):
            assert outcome == "503+retry", (model, outcomes)
        elif model in placed["a"]:
            assert outcome in {"200", "stream_done"}, (model, outcomes)


@contextlib.contextmanager
def _serve_ray(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``coserve serve --ray`` on a local cluster, in a session of its own (as a terminal runs a
    command: a Ctrl-C goes to its whole process group), until it answers ``/health``."""
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    library, cluster = _write_files(tmp_path)
    port = _free_port()
    command = [sys.executable, "-m", "coserve.cli", "serve", "--ray", "--library", str(library)]
    command += ["--cluster", str(cluster), "--port", str(port), "--max-replicas", "1", *extra]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with alarm(CLUSTER_TIMEOUT_S):
            while True:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                        break
                time.sleep(1)
            yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def _stream_while(url: str, max_tokens: int, *stops: Any) -> tuple[list[str], list[float]]:
    """A stream of ``small``'s answer (10 ms a token); each of ``stops`` is called once, the first at
    its first frame and each next one a second after the one before. The frames and when each came."""
    body = {"model": "small", "messages": [{"role": "user", "content": "one two"}], "max_tokens": max_tokens}
    frames: list[str] = []
    times: list[float] = []
    pending, last = list(stops), 0.0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                frames.append(line[len("data: ") :])
                times.append(time.monotonic())
                if pending and (len(frames) == 1 or time.monotonic() - last >= 1.0):
                    pending.pop(0)()
                    last = time.monotonic()
    return frames, times


class _Undrained:
    """A ``placement`` handle whose ingresses never drain (a stream that runs on)."""

    def __getattr__(self, method: str) -> Any:  # begin_drain, drained: each answers False
        return types.SimpleNamespace(remote=lambda: types.SimpleNamespace(result=lambda timeout_s: False))


def test_a_drain_waits_to_its_deadline_unless_cut() -> None:
    import threading

    start = time.monotonic()
    assert drain(_Undrained(), 0.6) is False
    assert 0.6 <= time.monotonic() - start < 2.0
    cut = threading.Event()
    threading.Timer(0.2, cut.set).start()
    start = time.monotonic()
    assert drain(_Undrained(), 60.0, cut) is False
    assert time.monotonic() - start < 2.0  # a second Ctrl-C: no more waiting


def test_serve_ray_runs_a_local_cluster_until_sigterm(tmp_path: Path) -> None:
    with _serve_ray(tmp_path) as (process, url), alarm(CLUSTER_TIMEOUT_S):
        response = _chat(url, "coserve", HELD_OUT["math"])
        assert response.status_code == 200 and response.json()["model"] == "big"
        # A stop drains (session 13's walk: a stream in flight was cut 0.3 s after SIGTERM): a
        # stream running at the signal ends whole, with [DONE], and the process exits 0.
        frames, _ = _stream_while(url, 300, lambda: process.send_signal(signal.SIGTERM))
        assert frames[-1] == "[DONE]"
        assert json.loads(frames[-2])["choices"][0]["finish_reason"] == "length"  # all 300 tokens
        assert process.wait(timeout=TEST_TIMEOUT_S) == 0


def test_ctrl_c_on_serve_ray_drains_and_exits_130_as_the_single_process_does(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole process group, Ray's processes included): the stream
    running ends whole and the exit status is 130, as ``coserve serve`` without Ray (before: 0)."""
    with _serve_ray(tmp_path) as (process, url), alarm(CLUSTER_TIMEOUT_S):
        frames, _ = _stream_while(url, 300, lambda: os.killpg(process.pid, signal.SIGINT))
        assert frames[-1] == "[DONE]"
        assert json.loads(frames[-2])["choices"][0]["finish_reason"] == "length"  # all 300 tokens
        assert process.wait(timeout=TEST_TIMEOUT_S) == 130
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_a_second_ctrl_c_on_serve_ray_cuts_the_drain_short(tmp_path: Path) -> None:
    """A second Ctrl-C during the drain stops waiting and cuts what runs, in one line, exit 130 (before:
    the drain ran on until the stream ended or the deadline passed)."""
    with _serve_ray(tmp_path, "--shutdown-timeout", "120") as (process, url), alarm(CLUSTER_TIMEOUT_S):
        frames: list[str] = []
        with contextlib.suppress(httpx.HTTPError):  # the cut stream may end abruptly
            frames, _ = _stream_while(url, 1500, *[lambda: os.killpg(process.pid, signal.SIGINT)] * 2)  # 15 s
        assert "[DONE]" not in frames  # cut, not drained to its end
        assert process.wait(timeout=TEST_TIMEOUT_S) == 130
    text = (tmp_path / "serve.log").read_text()
    assert "coserve: second interrupt: cutting the running requests" in text, text[-2000:]
    # The command's own output has no traceback; the ingress replica that held the cut stream may log
    # one (Ray forwards it, prefixed with the replica's name and pid): Serve's shutdown cancels it.
    own = [line for line in text.splitlines() if "pid=" not in line]
    assert not any(line.startswith("Traceback") for line in own), text[-2000:]


@pytest.mark.e2e
def test_the_real_general_expert_through_the_openai_client(tmp_path: Path) -> None:
    """One host over the real ``general`` expert (SmolLM2-135M, llama.cpp); the router is the
    hashing one (the expert is what is real here), the client the official openai one."""
    from openai import OpenAI

    from coserve.config import load_library

    (general,) = [
        s
        for s in yaml.safe_load(ROOT.joinpath("coserve/data/default.yaml").read_text())["experts"]
        if s["name"] == "general"
    ]
    data = library_data()
    data["experts"] = [general]
    data["router"]["map"] = dict.fromkeys(data["categories"], "general")
    data["router"]["fallback"]["expert"] = "general"
    library = tmp_path / "library.yaml"
    library.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_library(library)  # a valid library, before any cluster starts
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump({"nodes": [{"name": "a", "ram": "2GiB"}]}), encoding="utf-8")
    args = AppArgs(library=str(library), cluster=str(cluster_file), max_replicas=1, ingress_node="a")
    with _ray_app(args, node_b=False) as (_, _, url), alarm(CLUSTER_TIMEOUT_S):
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="coserve", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        )
        assert reply.model == "general" and (reply.choices[0].message.content or "").strip()
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
        assert (reply.model_extra or {})["coserve"]["expert"] == "general"
        stream = client.chat.completions.create(
            model="general", messages=[{"role": "user", "content": "Count to three."}], max_tokens=8, stream=True
        )
        chunks = list(stream)
        assert chunks[0].model == "general"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


# -- the ingress engine over a stand-in deployment handle (no Ray): choice, host failure, restart ------
class _Remote:
    """A stand-in for a Ray Serve deployment handle's method: ``.remote(...)``."""

    def __init__(self, call: Any):
        self.remote = call


class _Stream:
    """A stand-in for a streaming response: items, then optionally a Ray-like failure."""

    def __init__(self, items: list[Any], fail: bool):
        self.items, self.fail = list(items), fail

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        if self.items:
            return self.items.pop(0)
        if self.fail:
            raise RuntimeError("ActorDiedError (stand-in)")
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.items = []


class _Host:
    """A stand-in host replica: answers with the expert's name and the node's; ``dies_after`` chunks."""

    def __init__(self, node: str, tiers: dict[str, str], dies_after: int | None = None):
        self.node, self.tiers, self.dies_after, self.calls, self.dead = node, tiers, dies_after, 0, False
        self.withdrawn: set[str] = set()  # experts it answers not_placed for (moved away)

    def stream(self, request: Any, expert: str) -> _Stream:
        from coserve.types import Chunk, Usage

        self.calls += 1
        said = {"node": self.node}
        if expert in self.withdrawn:
            from coserve.errors import ExpertLoadError

            return _Stream([said, error_record(ExpertLoadError("moved", code="not_placed"))], fail=False)
        words = [f"{expert}@{self.node} ", "two ", "three"]
        if self.dies_after is not None:
            self.dead = True  # from now on it answers nothing
            return _Stream([said, *(Chunk(w) for w in words[: self.dies_after])], fail=True)
        return _Stream([said, Chunk(words[0]), Chunk(words[1]), Chunk(words[2], "stop", Usage(3, 3))], fail=False)


class _Hosts:
    """A stand-in for the expert-host deployment's handle: picks the replica as the request router
    does (``replica_ranks`` over what each replica reports), then the best of the first group."""

    def __init__(self, hosts: dict[str, _Host]):
        self.hosts = hosts
        self.stream = _Remote(self._stream)
        self.state = _Remote(self._state)

    def options(self, **_: Any) -> _Hosts:
        return self

    def _stream(self, request: Any, expert: str, nodes: list[str]) -> _Stream:
        from coserve.distributed.ray_choice import ReplicaReport, replica_ranks

        reports = {n: ReplicaReport(n, h.tiers) for n, h in self.hosts.items()}
        ranks = replica_ranks("stream", [request, expert, nodes], reports)
        return self.hosts[ranks[0][0]].stream(request, expert)

    async def _state(self, node: str) -> dict[str, Any]:
        if self.hosts[node].dead:
            raise RuntimeError("gone")
        return {"node": node, "tiers": self.hosts[node].tiers}


def _cluster_engine(tmp_path: Path, hosts: dict[str, _Host], placed: dict[str, list[str]]) -> Any:
    from coserve.config import load_library
    from coserve.distributed.ray_engine import ClusterEngine
    from coserve.router.embed import HashingEmbedder

    library, _ = _write_files(tmp_path)
    engine = ClusterEngine.build(load_library(library), tmp_path, embedder=HashingEmbedder())
    assert isinstance(engine, ClusterEngine)
    engine.attach(_Hosts(hosts), placed)
    return engine


async def _ask(engine: Any) -> tuple[str, Any]:
    """The text of a non-streamed "hi" routed to ``small`` (after the ingress read its hosts' state), and its call."""
    from coserve.engine.call import Call
    from coserve.types import Message, Request

    await engine.refresh_all()
    call = Call(Request((Message("user", "hi"),), "small"))
    await engine.route(call)
    return (await engine.complete(call)).text, call


def test_ingress_engine_prefers_the_active_host_and_restarts_after_a_host_dies(tmp_path: Path) -> None:
    hosts = {"a": _Host("a", {"small": "disk"}), "b": _Host("b", {"small": "active"})}
    engine = _cluster_engine(tmp_path, hosts, {"a": ["small"], "b": ["small"]})

    text, _ = asyncio.run(_ask(engine))
    assert text == "small@b two three"  # b has it ACTIVE
    hosts["b"].dies_after = 1  # b sends one chunk, then its node is gone
    text, call = asyncio.run(_ask(engine))
    assert text == "small@a two three"  # the non-streamed call started again on a
    assert call.expert == "small" and hosts["b"].calls == 2
    text, _ = asyncio.run(_ask(engine))
    assert text == "small@a two three" and hosts["b"].calls == 2  # b is down: not tried
    asyncio.run(engine.close())


def test_ingress_sends_a_call_refused_as_not_placed_to_the_experts_other_host(tmp_path: Path) -> None:
    """A host that no longer serves an expert (a move this ingress has not seen yet) refuses with
    ``not_placed``: the call goes to the expert's other host, and the ingress stops choosing the first."""
    hosts = {"a": _Host("a", {"small": "active"}), "b": _Host("b", {"small": "ram"})}
    hosts["a"].withdrawn.add("small")
    engine = _cluster_engine(tmp_path, hosts, {"a": ["small"], "b": ["small"]})

    text, call = asyncio.run(_ask(engine))
    assert text == "small@b two three" and call.node == "b" and call.tried == []  # no fallback to another expert
    assert engine.book.hosting("small") == ["b"] and hosts["a"].calls == 1
    assert engine.requested == {"small": 1}  # counted once for the placement controller
    asyncio.run(engine.close())
