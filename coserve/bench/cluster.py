"""``coserve bench cluster``: coserve's Ray Serve application against Ray Serve's own answer to many
models, on N simulated nodes of this host, with the serve benchmark's workload; then a coserve run
with one node killed halfway.

The nodes are raylets of Ray's multi-node test cluster (``ray.cluster_utils.Cluster``), ``node-1``
the head, each with its custom resource ``coserve-node-<name>`` and a memory budget of about one
expert (coserve.bench.cluster_report.BUDGET_RULE). The workload is coserve.bench.workload's (its
own held-out prompts, seeded Poisson arrivals), replayed over loopback HTTP by
coserve.bench.replay (streamed, ``max_tokens`` each, tokens from the usage chunk), always asking
for the routed model ``coserve``. Policies, ``runs`` times each, alternating, each run a fresh
application (every expert starts on disk):

* ``coserve``: coserve.distributed.ray_app with a cluster file of the N nodes (the planner's
  placement, an expert host per node with coserve's engine and tiered pool);
* ``peer``: coserve.distributed.ray_peer, one ``@serve.multiplexed`` deployment of N replicas (one per
  node) keeping as many experts each as fit the budget, behind the same ingress and router;
* ``fault`` (last, as it kills a node): the coserve application with its ingress and the HTTP
  proxy on ``node-1``, and the first other node that hosts experts removed when half the requests
  have arrived; every request's outcome is classified (coserve.bench.replay.outcome_of).

Ray is shut down at the end however the benchmark ends (Ctrl-C included). Every start and stop is
bounded in time, and every replay by ``timeout_s`` after its last arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from coserve.bench.cluster_report import (
    BUDGET_RULE,
    fault_counts,
    models_per_replica,
    node_budget,
    summarise_policy,
    targets,
)
from coserve.bench.processes import free_port
from coserve.bench.replay import replay
from coserve.bench.workload import make_workload
from coserve.config import LibraryConfig
from coserve.cpus import usable_cores

__all__ = ["APP", "ClusterBenchOptions", "bench_cluster"]

APP = "coserve-bench"
START_TIMEOUT_S = 300  # starting the raylets, or one application (routers, runtimes) on a busy host
STOP_TIMEOUT_S = 120
CALL_TIMEOUT_S = 30.0  # a deployment handle call (counts, health)
THREADED_BACKENDS = ("llamacpp", "llamacpp-split")  # their ``threads`` option sets decode threads
THREADS_RULE = "each llama.cpp expert: the host's usable cores // nodes decode threads (at least 1)"
OBJECT_STORE_BYTES = 128 * 2**20  # per raylet: only small request objects cross
NOTE = (
    "timings measured on the machine named in provenance; the simulated nodes share its cores, "
    "so a shared machine makes them noisy"
)


@dataclass(frozen=True)
class ClusterBenchOptions:
    """How ``coserve bench cluster`` runs."""

    nodes: int
    runs: int = 3  # alternating runs per policy
    requests: int = 24
    rate: float = 2.0  # Poisson arrivals per second (as the serve benchmark: more than the experts keep up with)
    max_tokens: int = 24
    seed: int = 0
    timeout_s: float = 300.0  # a run ends at the latest this long after its last arrival
    fault: bool = True
    cold_load_weight: float | None = None  # the generated cluster file's planner weight (None: its default)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """TimeoutError in the main thread after ``seconds``; an alarm already set is restored after."""

    def expire(*_: Any) -> None:
        raise TimeoutError(f"{what} took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    outer = signal.alarm(max(1, math.ceil(seconds)))
    started = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.alarm(max(1, outer - int(time.monotonic() - started)))


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(1, count + 1)]


def node_library(library: LibraryConfig, nodes: int, folder: Path) -> Path:
    """A copy of the library for the simulated nodes: each llama.cpp expert decodes with the host's
    usable cores shared out over the nodes (``THREADS_RULE``), so N runtimes on N simulated nodes do
    not fight over the same cores; an expert that names its own ``threads`` keeps them."""
    from coserve.bench.contenders import bench_library

    path = bench_library(library, folder, library.memory.active, library.memory.ram)
    data = yaml.safe_load(path.read_text())
    for expert in data["experts"]:
        if expert.get("backend") in THREADED_BACKENDS:
            options = expert.setdefault("options", {})
            options.setdefault("threads", max(1, usable_cores() // nodes))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def plan_nodes(
    library: LibraryConfig, names: list[str], folder: Path, cold_load_weight: float | None = None
) -> dict[str, Any]:
    """The simulated nodes' budget, the cluster file written for them and the planner's placement."""
    from coserve.distributed.cluster import Cluster, load_cluster
    from coserve.distributed.inputs import library_footprints, plan_library

    probe = Cluster.model_validate({"nodes": [{"name": names[0], "ram": 0}]})
    footprints = {e: f.ram_bytes for e, f in library_footprints(library, probe).items()}
    budget = node_budget(footprints)
    path = folder / "cluster.yaml"
    spec: dict[str, Any] = {"nodes": [{"name": n, "ram": budget} for n in names]}
    if cold_load_weight is not None:
        spec["planner"] = {"cold_load_weight": cold_load_weight}
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    placement, _ = plan_library(library, load_cluster(path))
    report = {
        node: {
            "experts": [r.expert for r in placement.on(node)],
            "bytes": placement.used(node)[0],
            "budget_bytes": budget,
        }
        for node in names
    }
    return {"path": path, "budget": budget, "footprints": footprints, "placement": report}


@contextlib.contextmanager
def ray_cluster(names: list[str]) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """Ray's test cluster with one raylet per name (the first is the head), Serve on a loopback port
    with one HTTP proxy on the head; yields the cluster, its nodes by name and the base URL.
    Serve, the driver and every raylet stop at the end, however it ends."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from coserve.distributed.ray_app import node_resources

    def node_args(name: str) -> dict[str, Any]:
        return {"num_cpus": 1, "resources": node_resources(name), "object_store_memory": OBJECT_STORE_BYTES}

    port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={**node_args(names[0]), "include_dashboard": False})
    try:
        nodes = {names[0]: cluster.head_node}
        with deadline(START_TIMEOUT_S, "starting the raylets"):
            for name in names[1:]:
                nodes[name] = cluster.add_node(**node_args(name))
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        yield cluster, nodes, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception), deadline(STOP_TIMEOUT_S, "stopping Serve"):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _deployed(app: Any) -> None:
    from ray import serve

    with deadline(START_TIMEOUT_S, "starting the application"):
        serve.run(app, name=APP, route_prefix="/")


def _deleted() -> None:
    from ray import serve

    with contextlib.suppress(Exception), deadline(STOP_TIMEOUT_S, "deleting the application"):
        serve.delete(APP)


def _host_call(node: str, method: str) -> Any:
    from ray import serve

    from coserve.distributed.ray_app import HOSTS

    handle = serve.get_deployment_handle(HOSTS, app_name=APP)  # its router sends the call to the node's replica
    return getattr(handle, method).remote(node).result(timeout_s=CALL_TIMEOUT_S)


def _replayed(url: str, workload: list[dict[str, Any]], options: ClusterBenchOptions) -> dict[str, Any]:
    return asyncio.run(replay(url, workload, options.max_tokens, routed=True, tolerate_errors=True,
                              timeout_s=options.timeout_s))  # fmt: skip


def run_coserve(
    url: str, library: str | None, nodes: dict[str, Any], workload: list[dict[str, Any]], options: ClusterBenchOptions
) -> dict[str, Any]:
    """One replay against coserve's application; loads and memory read from every expert host."""
    from coserve.distributed.ray_app import AppArgs, build_app, placed_experts

    args = AppArgs(library=library, cluster=str(nodes["path"]), max_replicas=1, ingress_node=node_names(1)[0])
    _, placed = placed_experts(args)
    try:
        _deployed(build_app(args.to_dict()))
        result = _replayed(url, workload, options)
        result["loads_by_node"] = {node: _host_call(node, "load_counts") for node in sorted(placed)}
        result["loads"] = sum(sum(counts.values()) for counts in result["loads_by_node"].values())
        result["memory"] = {node: _host_call(node, "health")["memory"] for node in sorted(placed)}
        return result
    finally:
        _deleted()


def run_peer(
    url: str, library: str | None, nodes: dict[str, Any], workload: list[dict[str, Any]], options: ClusterBenchOptions
) -> dict[str, Any]:
    """One replay against the multiplexed peer; loads from its replicas' tally."""
    import ray

    from coserve.distributed.ray_peer import TALLY_NAMESPACE, LoadTally, PeerArgs, build_peer_app

    tally_name = f"coserve-bench-tally-{os.getpid()}-{time.monotonic_ns()}"
    tally: Any = ray.remote(num_cpus=0)(LoadTally).options(name=tally_name, namespace=TALLY_NAMESPACE).remote()
    per_replica = models_per_replica(nodes["budget"], nodes["footprints"])
    args = PeerArgs(library=library, replicas=options.nodes, models_per_replica=per_replica,
                    ingress_node=node_names(1)[0], tally=tally_name)  # fmt: skip
    try:
        _deployed(build_peer_app(asdict(args)))
        result = _replayed(url, workload, options)
        result["loads_by_node"] = ray.get(tally.counts.remote(), timeout=CALL_TIMEOUT_S)
        result["loads"] = sum(sum(counts.values()) for counts in result["loads_by_node"].values())
        result["models_per_replica"] = per_replica
        return result
    finally:
        _deleted()
        ray.kill(tally)


def run_fault(
    url: str,
    library: str | None,
    nodes: dict[str, Any],
    cluster: Any,
    ray_nodes: dict[str, Any],
    workload: list[dict[str, Any]],
    options: ClusterBenchOptions,
) -> dict[str, Any]:
    """The coserve application with one expert-hosting node (not the ingress's) removed halfway."""
    from coserve.distributed.ray_app import AppArgs, build_app

    head = node_names(1)[0]
    victims = [n for n, row in nodes["placement"].items() if n != head and row["experts"]]
    if not victims:
        return {"skipped": f"no node besides {head} (the ingress's) hosts an expert"}
    victim, at = victims[0], workload[len(workload) // 2]["at"]
    args = AppArgs(library=library, cluster=str(nodes["path"]), max_replicas=1, ingress_node=head)

    async def killed_halfway() -> dict[str, Any]:
        run = asyncio.ensure_future(replay(url, workload, options.max_tokens, routed=True, tolerate_errors=True,
                                           timeout_s=options.timeout_s))  # fmt: skip
        await asyncio.sleep(at)
        await asyncio.to_thread(cluster.remove_node, ray_nodes[victim], False)
        return await run

    try:
        _deployed(build_app(args.to_dict()))
        result = asyncio.run(killed_halfway())
    finally:
        _deleted()
    outcomes = [r["outcome"] for r in result["requests"]]
    return {**fault_counts(outcomes), "killed": victim, "killed_at_s": at, "outcomes": outcomes}


def bench_cluster(library: LibraryConfig, options: ClusterBenchOptions) -> dict[str, Any]:
    """Run every policy ``options.runs`` times, alternating, then the fault run; print and return the figures."""
    if options.nodes < 2 or options.runs < 1 or options.requests < 2:
        from coserve.errors import ConfigError

        raise ConfigError("bench cluster: need --nodes >= 2, --runs >= 1 and --requests >= 2")
    started = time.monotonic()
    names = node_names(options.nodes)
    workload = make_workload(library, options.requests, options.rate, options.seed)
    counts = {e: sum(w["expert"] == e for w in workload) for e in library.expert_names}
    runs: dict[str, list[dict[str, Any]]] = {"coserve": [], "peer": []}
    with tempfile.TemporaryDirectory() as tmp:
        library_path = str(node_library(library, options.nodes, Path(tmp)))
        nodes = plan_nodes(library, names, Path(tmp), options.cold_load_weight)
        print(f"{options.nodes} nodes of {nodes['budget'] / 2**20:.0f} MiB ({BUDGET_RULE}); placement: "
              + "; ".join(f"{n}: {', '.join(r['experts']) or '-'}" for n, r in nodes["placement"].items()))  # fmt: skip
        print(f"workload: {options.requests} requests, Poisson {options.rate}/s, {options.max_tokens} tokens at "
              f"most, experts {counts}; {options.runs} alternating runs per policy", flush=True)  # fmt: skip
        fault: dict[str, Any] = {"skipped": "--no-fault"}
        with ray_cluster(names) as (cluster, ray_nodes, url):
            for repetition in range(options.runs):
                for policy, run in (("coserve", run_coserve), ("peer", run_peer)):
                    try:
                        row = run(url, library_path, nodes, workload, options)
                    except Exception as exc:  # recorded, never hidden: the policy's targets are then MISSED
                        row = {"error": f"{type(exc).__name__}: {exc}"}
                    runs[policy].append(row)
                    print(f"run {repetition + 1} {policy:<8} " + _line(row), flush=True)
            if options.fault:
                fault = run_fault(url, library_path, nodes, cluster, ray_nodes, workload, options)
                shown = [f"{k} {fault[k]}" for k in ("sent", "ok", "clean_errors", "lost", "killed") if k in fault]
                print(f"fault: {', '.join(shown) or fault.get('skipped')}", flush=True)
    result = _result(options, nodes, counts, runs, fault)
    result["elapsed_s"] = round(time.monotonic() - started, 1)  # the whole benchmark, Ray's start and stop included
    print(f"took {result['elapsed_s']:.0f} s")
    return result


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    return (f"{row['throughput_rps']:.3f} req/s, p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, "
            f"{row['loads']} loads, {row['lost']} lost, {row['completion_tokens']} tokens")  # fmt: skip


def _result(
    options: ClusterBenchOptions,
    nodes: dict[str, Any],
    counts: dict[str, int],
    runs: dict[str, list[dict[str, Any]]],
    fault: dict[str, Any],
) -> dict[str, Any]:
    """The JSON: settings, placement (with the most memory each host reported), policies, fault, targets."""
    placement = nodes["placement"]
    for row in runs["coserve"]:
        for node, memory in row.get("memory", {}).items():
            measured = placement[node].setdefault("measured", {})
            for key in ("active_bytes", "ram_bytes"):
                measured[key] = max(measured.get(key, 0), int(memory[key]))
    policies = {policy: summarise_policy([_without_requests(r) for r in rows]) for policy, rows in runs.items()}
    result = {
        "note": NOTE,
        "nodes": options.nodes,
        "settings": {**asdict(options), "node_budget_bytes": nodes["budget"], "budget_rule": BUDGET_RULE,
                     "threads_rule": THREADS_RULE, "threads": max(1, usable_cores() // options.nodes),
                     "footprints": nodes["footprints"],
                     "peer_models_per_replica": models_per_replica(nodes["budget"], nodes["footprints"])},
        "workload": {"experts": counts},
        "placement": placement,
        "policies": policies,
        "fault": fault,
    }  # fmt: skip
    result["targets"] = targets(policies["coserve"], policies["peer"], fault, placement)
    for name, row in result["targets"].items():
        print(f"target {name:<20} {row['value']} (want {row['want']}, median): {row['verdict']}")
    return result


def _without_requests(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "requests"}
