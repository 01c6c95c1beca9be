"""`coserve bench cluster`: its arithmetic on plain numbers, the peer's loaded model (released only
once its requests end), the multiplexed peer on a Ray test cluster, and a whole tiny run through
the CLI with fake experts.

The Ray tests are marked ``ray`` and skipped with the reason when Ray Serve is not installed; each
runs under an alarm and talks to 127.0.0.1 only; the cluster stops however the test ends.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import MiB, library_data
from test_ray_serve import CLUSTER_TIMEOUT_S, alarm

from coserve.bench.cluster_cpu import cpu_by_role, role_of
from coserve.bench.cluster_report import (
    fault_counts,
    median_by_key,
    models_per_replica,
    node_budget,
    service_times,
    summarise_policy,
    targets,
    unbounded_budget,
)
from coserve.bench.replay import outcome_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- plain numbers ------------------------------------------------------------------------------------
def test_a_node_holds_the_largest_expert_and_a_peer_replica_what_always_fits() -> None:
    footprints = {"small": 10 * MiB, "coder": 20 * MiB, "big": 30 * MiB}
    assert node_budget(footprints) == 32 * MiB  # 30 MiB x 1.05 = 31.5 MiB, rounded up to a MiB
    assert node_budget({"x": 100 * MiB}) == 105 * MiB
    assert models_per_replica(32 * MiB, footprints) == 1  # two of the largest do not fit
    assert models_per_replica(61 * MiB, footprints) == 2
    assert models_per_replica(5 * MiB, footprints) == 1  # never none
    assert unbounded_budget(footprints) == 63 * MiB  # (10 + 20 + 30) MiB x 1.05, every expert at once


def _run(rps: float, p50: float, loads: int, lost: int = 0) -> dict[str, Any]:
    return {"throughput_rps": rps, "p50_s": p50, "p95_s": 2 * p50, "loads": loads, "lost": lost}


def test_a_policy_is_the_median_of_its_runs_and_every_loss_counts() -> None:
    runs = [_run(1.0, 3.0, 9, lost=1), _run(3.0, 1.0, 3), _run(2.0, 2.0, 4), {"error": "TimeoutError: x"}]
    summary = summarise_policy(runs)
    assert summary["throughput_rps"] == 2.0 and summary["p50_s"] == 2.0 and summary["p95_s"] == 4.0
    assert summary["loads"] == 4.0
    assert summary["lost"] == 1  # the sum over runs, not a median that would hide it
    assert summary["min"]["throughput_rps"] == 1.0 and summary["max"]["throughput_rps"] == 3.0
    assert summary["min"]["loads"] == 3.0 and summary["max"]["loads"] == 9.0
    assert summary["failed_runs"] == 1 and len(summary["runs"]) == 4
    failed = summarise_policy([{"error": "boom"}])
    assert failed["throughput_rps"] is None and failed["failed_runs"] == 1


def test_targets_are_met_or_missed_never_hidden() -> None:
    placement = {"a": {"bytes": 30, "budget_bytes": 32}, "b": {"bytes": 20, "budget_bytes": 32}}
    fault = {"sent": 10, "ok": 8, "clean_errors": 2, "lost": 0}
    coserve, peer = {"loads": 3.0, "throughput_rps": 1.5}, {"loads": 6.0, "throughput_rps": 1.0}
    rows = targets(coserve, peer, fault, placement)
    assert {name: row["verdict"] for name, row in rows.items()} == {
        "loads_vs_peer": "met",  # 3 <= 6 / 2
        "throughput_vs_peer": "met",  # 1.5 >= 1.5 x 1.0
        "fault_lost": "met",
        "within_budget": "met",
    }
    assert rows["loads_vs_peer"]["value"] == 0.5 and rows["throughput_vs_peer"]["value"] == 1.5
    over = {**placement, "b": {"bytes": 20, "budget_bytes": 32, "measured": {"active_bytes": 33}}}
    rows = targets({"loads": 4.0, "throughput_rps": 1.4}, peer, {**fault, "lost": 1}, over)
    assert {name: row["met"] for name, row in rows.items()} == dict.fromkeys(rows, False)
    assert rows["within_budget"]["over"] == ["b"] and rows["within_budget"]["verdict"] == "MISSED"
    # a policy that failed, a fault run that was skipped: missed, not met by default
    rows = targets({"loads": None, "throughput_rps": None}, peer, {"skipped": "--no-fault"}, placement)
    assert [rows[n]["met"] for n in ("loads_vs_peer", "throughput_vs_peer", "fault_lost")] == [False] * 3


def test_the_ceiling_says_whether_one_and_a_half_times_the_peer_is_reachable() -> None:
    placement = {"a": {"bytes": 30, "budget_bytes": 32}}
    peer = {"loads": 6.0, "throughput_rps": 1.0}
    rows = targets({"loads": 3.0, "throughput_rps": 1.1}, peer, {"sent": 1, "lost": 0}, placement)
    assert "ceiling_vs_peer" not in rows  # no unbounded contender, no ceiling
    rows = targets({"loads": 3.0, "throughput_rps": 1.1}, peer, {}, placement, {"throughput_rps": 1.25})
    ceiling = rows["ceiling_vs_peer"]
    assert ceiling["value"] == 1.25 and ceiling["informational"] and not ceiling["met"]
    assert ceiling["verdict"] == "1.5x NOT reachable with this compute"
    rows = targets({"loads": 3.0, "throughput_rps": 1.1}, peer, {}, placement, {"throughput_rps": 1.5})
    assert rows["ceiling_vs_peer"]["verdict"] == "1.5x reachable"
    failed = targets({}, {"throughput_rps": 1.0}, {}, placement, {"throughput_rps": None})
    assert failed["ceiling_vs_peer"]["met"] is False and failed["ceiling_vs_peer"]["value"] is None


def test_service_times_per_expert_and_cpu_seconds_per_process_role() -> None:
    def request(expert: str, ttft: float, latency: float, tokens: int, outcome: str = "ok") -> dict[str, Any]:
        return {"expert": expert, "answered_by": expert, "ttft_s": ttft, "latency_s": latency,
                "completion_tokens": tokens, "outcome": outcome}  # fmt: skip

    requests = [request("big", 1.0, 3.0, 5), request("big", 3.0, 4.0, 3), request("big", 2.0, 6.0, 9)]
    requests += [request("small", 0.5, 0.7, 1), request("small", 9.0, 9.0, 0, outcome="lost: status 502")]
    times = service_times(requests)
    assert set(times) == {"big", "small"}  # the lost request is left out
    # ttft 1, 3, 2; decode 2, 1, 4 s over 4, 2, 8 tokens after the first: 0.5 s per token each
    assert times["big"] == {"count": 3, "ttft_s": 2.0, "ttft_min_s": 1.0, "decode_s": 2.0, "decode_s_per_token": 0.5}
    small = times["small"]
    assert (small["count"], small["ttft_s"], small["decode_s"]) == (1, 0.5, 0.2)
    assert math.isnan(small["decode_s_per_token"])  # one token: nothing decoded after the first
    assert median_by_key([{"raylet": 1.0, "gcs_server": 4.0}, {"raylet": 3.0}, {"raylet": 2.0}]) == {
        "gcs_server": 4.0,  # the median of the runs that have it, largest first
        "raylet": 2.0,
    }
    assert role_of(["ray::ServeReplica:coserve-bench:expert-host"], "python") == "replica expert-host"
    assert role_of(["ray::ServeController.listen_for_change"], "python") == "ServeController"
    assert role_of(["ray::ServeReplica:app:quota.handle_request"], "python") == "replica quota"
    assert role_of(["/x/ray/core/src/ray/raylet/raylet", "--node_id=1"], "raylet") == "raylet"
    assert role_of(["python", "/x/ray/dashboard/agent.py", "--x"], "python") == "dashboard agent"
    assert role_of(["bash"], "bash") is None
    before = {1: ("raylet", 10.0), 2: ("ray::IDLE", 5.0), 3: ("gcs_server", 2.0)}
    after = {1: ("raylet", 12.5), 2: ("replica peer", 7.0), 4: ("raylet", 1.0)}
    # pid 1 spent 2.5 s; pid 2 changed role (an idle worker became a replica): all its 7 s count;
    # pid 4 started in between: from zero; pid 3 ended: left out
    assert cpu_by_role(before, after) == {"raylet": 3.5, "replica peer": 7.0}
    assert list(cpu_by_role(before, after)) == ["replica peer", "raylet"]


def test_how_a_request_ended() -> None:
    done = ['{"choices": []}', "[DONE]"]
    assert outcome_of(200, None, done) == "ok"
    assert outcome_of(200, None, ['{"choices": []}', '{"error": {"code": "expert_failed"}}', "[DONE]"]) == "clean_error"
    assert outcome_of(200, None, ['{"choices": []}']) == "lost: truncated stream"
    assert outcome_of(503, "5", []) == "clean_error" and outcome_of(429, "1", []) == "clean_error"
    assert outcome_of(503, None, []) == "lost: status 503"  # no Retry-After: the client cannot know when
    assert outcome_of(502, None, []) == "lost: status 502"
    assert fault_counts(["ok", "ok", "clean_error", "lost: status 502"]) == {
        "sent": 4,
        "ok": 2,
        "clean_errors": 1,
        "lost": 1,
    }


# -- the peer's loaded model, without Ray ---------------------------------------------------------------
def test_a_released_peer_model_is_freed_only_after_its_streams_end(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from coserve.backends.fake import FakeBackend
    from coserve.config import load_library
    from coserve.distributed.ray_peer_model import PeerModel
    from coserve.errors import ExpertFailed
    from coserve.types import Message, Request, Sampling

    data = library_data()
    data["experts"][0]["options"]["token_delay"] = 0.05
    path = tmp_path / "library.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    spec = load_library(path).expert("small")
    backend, executor = FakeBackend(), ThreadPoolExecutor(4)
    request = Request((Message("user", "one two three"),), "small", Sampling(max_tokens=6))

    async def scenario() -> tuple[list[str], list[str]]:
        model = await PeerModel.load(backend, spec, None, executor)
        texts: list[str] = []
        stream = model.run(request)
        texts.append((await anext(stream)).text)  # the request holds the model from here
        releasing = asyncio.get_running_loop().run_in_executor(executor, model.release)
        await asyncio.sleep(0.1)
        unloads_while_streaming = list(backend.unloads)
        texts.extend([chunk.text async for chunk in stream])
        await releasing
        return texts, unloads_while_streaming

    texts, early = asyncio.run(scenario())
    assert early == []  # Ray dropped it from its cache, but the stream still runs on it
    assert "".join(texts).split() == ["small", "says:", "one", "two", "three", "one"]
    assert backend.loads == ["small"] and backend.unloads == ["small"] and backend.unstages == ["small"]

    async def after_release() -> None:
        model = await PeerModel.load(backend, spec, None, executor)
        await asyncio.get_running_loop().run_in_executor(executor, model.release)
        with pytest.raises(ExpertFailed, match="unloaded"):
            await anext(model.run(request))
        model.release()  # idempotent

    asyncio.run(after_release())
    assert backend.unloads == ["small", "small"]
    executor.shutdown()


# -- on Ray's test cluster ------------------------------------------------------------------------------
def _fake_library(folder: Path) -> Path:
    data = library_data()
    for spec in data["experts"]:
        spec["options"]["token_delay"] = 0.005
    path = folder / "library.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.ray
def test_the_multiplexed_peer_serves_every_expert_and_counts_its_loads(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    import ray
    from ray import serve

    from coserve.bench.cluster import APP, ray_cluster
    from coserve.distributed.ray_peer import TALLY_NAMESPACE, LoadTally, build_peer_app

    library = _fake_library(tmp_path)
    with alarm(CLUSTER_TIMEOUT_S), ray_cluster(["node-1", "node-2"]) as (_, _, url):
        tally: Any = ray.remote(num_cpus=0)(LoadTally).options(name="tally-test", namespace=TALLY_NAMESPACE).remote()
        args = {"library": str(library), "replicas": 2, "models_per_replica": 1, "tally": "tally-test"}
        serve.run(build_peer_app(args), name=APP, route_prefix="/")
        answers = {}
        for expert in ("small", "coder", "big"):
            body = {"model": expert, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4}
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text
            answers[expert] = (response.json()["model"], response.json()["choices"][0]["message"]["content"])
        counts = ray.get(tally.counts.remote(), timeout=30)
        status = serve.status().applications[APP].deployments["peer"]
    assert answers == {e: (e, f"{e} says: hi there") for e in ("small", "coder", "big")}
    # Three experts asked one after another, none loaded before: three cold loads over the replicas.
    assert sum(n for per_node in counts.values() for n in per_node.values()) == 3
    assert set(counts) <= {"node-1", "node-2"}
    assert sum(status.replica_states.values()) == 2


@pytest.mark.ray
def test_the_cli_runs_every_contender_and_the_fault_and_writes_the_figures(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'coserve[ray]')")
    from coserve.bench.workload import make_workload
    from coserve.cli import main
    from coserve.config import load_library

    library = _fake_library(tmp_path)
    out = tmp_path / "cluster.json"
    argv = ["bench", "cluster", "--nodes", "2", "--runs", "1", "--requests", "6", "--rate", "20"]
    argv += ["--max-tokens", "4", "--library", str(library), "--json", str(out), "--note", "shared machine"]
    started = time.monotonic()
    with alarm(CLUSTER_TIMEOUT_S):
        assert main(argv) == 0
    took = time.monotonic() - started
    result = json.loads(out.read_text())
    assert result["provenance"]["command"].startswith("coserve bench cluster --nodes 2")
    assert result["nodes"] == 2 and result["settings"]["node_budget_bytes"] == 32 * MiB
    assert result["settings"]["ray_dashboard"] is False and result["note"].endswith("; shared machine")
    placement = result["placement"]
    assert sorted(sorted(row["experts"]) for row in placement.values()) == [["big"], ["coder", "small"]]
    for row in placement.values():
        assert row["bytes"] == 30 * MiB and row["budget_bytes"] == 32 * MiB  # big alone; small + coder
    planned = {w["expert"] for w in make_workload(load_library(library), 6, 20.0, seed=0)}
    coserve, peer, unbounded = (result["policies"][p] for p in ("coserve", "peer", "unbounded"))
    for policy in (coserve, peer, unbounded):
        assert {"throughput_rps", "p50_s", "p95_s", "loads", "lost", "min", "max", "runs"} <= set(policy)
        assert policy["lost"] == 0 and policy["failed_runs"] == 0 and len(policy["runs"]) == 1
        assert policy["runs"][0]["sent"] == policy["runs"][0]["ok"] == 6
        assert policy["throughput_rps"] > 0 and 0 < policy["p50_s"] <= policy["p95_s"]
        assert sum(row["count"] for row in policy["service_s"].values()) == 6
        assert set(policy["service_s"]) <= {"small", "coder", "big"}
        roles = policy["cpu_s"]  # seconds each kind of Ray process spent during the replay
        assert {"raylet", "gcs_server"} <= set(roles) and all(v >= 0 for v in roles.values())
    # the unbounded contender: each node's budget holds all three (60 MiB x 1.05 = 63 MiB), every
    # expert resident on every node, loaded once each when the hosts start, none during traffic
    assert result["settings"]["unbounded_budget_bytes"] == 63 * MiB
    assert result["unbounded_placement"].keys() == placement.keys()
    for row in result["unbounded_placement"].values():
        assert sorted(row["experts"]) == ["big", "coder", "small"]
        assert row["bytes"] == 60 * MiB and row["budget_bytes"] == 63 * MiB
        assert all(v <= 63 * MiB for v in row["measured"].values())
    assert unbounded["loads"] == 6
    assert all(run["warmed_s"] >= 0 for run in unbounded["runs"])  # replayed once all six were loaded
    # each application's replicas are gone before the next one's replay: none of coserve's in the peer's
    assert not {"replica expert-host", "replica placement", "replica quota"} & set(peer["cpu_s"])
    assert {"expert-host", "ingress"} <= {role.removeprefix("replica ") for role in unbounded["cpu_s"]}
    # the plan's resident experts are pinned (loaded once when the host is assigned them) and stay:
    # one load per placed expert, whatever the workload asks for
    assert coserve["loads"] == sum(len(row["experts"]) for row in placement.values())
    assert peer["loads"] >= len(planned)  # the peer loads each at least once
    fault = result["fault"]
    assert fault["sent"] == 6 and fault["ok"] + fault["clean_errors"] + fault["lost"] == 6
    assert fault["killed"] != "node-1"  # the ingress's node stays
    assert fault["lost"] == 0
    kinds = {"loads_vs_peer", "throughput_vs_peer", "fault_lost", "within_budget", "ceiling_vs_peer"}
    assert set(result["targets"]) == kinds
    assert result["targets"]["within_budget"]["verdict"] == "met"
    ceiling = result["targets"]["ceiling_vs_peer"]
    assert ceiling["value"] == pytest.approx(unbounded["throughput_rps"] / peer["throughput_rps"])
    reachable = ceiling["value"] >= 1.5
    assert ceiling["verdict"] == ("1.5x reachable" if reachable else "1.5x NOT reachable with this compute")
    verdicts = [row["verdict"] for name, row in result["targets"].items() if name != "ceiling_vs_peer"]
    assert all(verdict in ("met", "MISSED") for verdict in verdicts)
    print(f"bench cluster with fakes took {took:.0f} s")  # shown with pytest -s, to size CI
