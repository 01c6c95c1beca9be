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
* ``unbounded`` (``ceiling``, on by default): the coserve application on the same nodes, threads and
  workload with every node's budget holding every expert (cluster_report.UNBOUNDED_RULE) and the
  planner's ``everywhere`` placement (every expert resident on every node), so no load happens
  during traffic and replica choice is left with "least busy": the most any placement or replica
  choice can get from this compute, the ceiling the 1.5x target is judged against;
* ``fault`` (last, as it kills a node): the coserve application with its ingress and the HTTP
  proxy on ``node-1``, and the first other node that hosts experts removed when half the requests
  have arrived; every request's outcome is classified (coserve.bench.replay.outcome_of).

Each run also records the CPU seconds every Ray process spent during its replay, by role
(coserve.bench.cluster_cpu), and each expert's client-side service times (time to first token:
routing, queueing, any load and the prefill; then decoding). Ray's dashboard is off for every
contender (cluster_ray.DASHBOARD).

Ray is shut down at the end however the benchmark ends (Ctrl-C included). Every start and stop is
bounded in time, and every replay by ``timeout_s`` after its last arrival.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from coserve.bench import cluster_report
from coserve.bench.cluster_cpu import cpu_by_role, snapshot
from coserve.bench.cluster_ray import (
    APP,
    CALL_TIMEOUT_S,
    DASHBOARD,
    deleted,
    deployed,
    host_call,
    ray_cluster,
    warmed,
)
from coserve.bench.replay import replay
from coserve.bench.workload import make_workload
from coserve.config import LibraryConfig
from coserve.cpus import usable_cores

__all__ = ["APP", "ClusterBenchOptions", "bench_cluster"]

THREADED_BACKENDS = ("llamacpp", "llamacpp-split")  # their ``threads`` option sets decode threads
THREADS_RULE = "each llama.cpp expert: the host's usable cores // nodes decode threads (at least 1)"
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
    ceiling: bool = True  # also run ``unbounded`` (every expert resident on every node)
    note: str | None = None  # added to the JSON's note (e.g. "measured on a shared machine")


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
    library: LibraryConfig,
    names: list[str],
    folder: Path,
    cold_load_weight: float | None = None,
    everywhere: bool = False,
) -> dict[str, Any]:
    """The simulated nodes' budget, the cluster file written for them and the planner's placement;
    ``everywhere``: each node's budget holds every expert (cluster_report.UNBOUNDED_RULE) and the planner puts
    every expert resident on every node."""
    from coserve.distributed.cluster import Cluster, load_cluster
    from coserve.distributed.inputs import library_footprints, plan_library

    probe = Cluster.model_validate({"nodes": [{"name": names[0], "ram": 0}]})
    footprints = {e: f.ram_bytes for e, f in library_footprints(library, probe).items()}
    budget = cluster_report.unbounded_budget(footprints) if everywhere else cluster_report.node_budget(footprints)
    path = folder / ("cluster-unbounded.yaml" if everywhere else "cluster.yaml")
    spec: dict[str, Any] = {"nodes": [{"name": n, "ram": budget} for n in names]}
    planner: dict[str, Any] = {"everywhere": True} if everywhere else {}
    if cold_load_weight is not None:
        planner["cold_load_weight"] = cold_load_weight
    if planner:
        spec["planner"] = planner
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


def _replayed(url: str, workload: list[dict[str, Any]], options: ClusterBenchOptions) -> dict[str, Any]:
    """The replay's figures and requests, with the CPU seconds each Ray process spent during it."""
    before = snapshot()
    result = asyncio.run(replay(url, workload, options.max_tokens, routed=True, tolerate_errors=True,
                                timeout_s=options.timeout_s))  # fmt: skip
    result["cpu_s"] = cpu_by_role(before, snapshot())
    return result


def run_coserve(
    url: str,
    library: str | None,
    nodes: dict[str, Any],
    workload: list[dict[str, Any]],
    options: ClusterBenchOptions,
    warm: bool = False,
) -> dict[str, Any]:
    """One replay against coserve's application; loads and memory read from every expert host.
    ``warm``: the replay starts once every placed expert is loaded (the unbounded contender: no load
    during traffic); else at once, while the hosts load their resident experts."""
    from coserve.distributed.ray_app import AppArgs, build_app, placed_experts

    args = AppArgs(library=library, cluster=str(nodes["path"]), max_replicas=1, ingress_node=node_names(1)[0])
    _, placed = placed_experts(args)
    try:
        deployed(build_app(args.to_dict()))
        warmed_s = warmed(sorted(placed)) if warm else None
        result = _replayed(url, workload, options)
        if warmed_s is not None:
            result["warmed_s"] = round(warmed_s, 2)  # loading every placed expert before the replay
        result["loads_by_node"] = {node: host_call(node, "load_counts") for node in sorted(placed)}
        result["loads"] = sum(sum(counts.values()) for counts in result["loads_by_node"].values())
        result["memory"] = {node: host_call(node, "health")["memory"] for node in sorted(placed)}
        return result
    finally:
        deleted()


def run_unbounded(
    url: str, library: str | None, nodes: dict[str, Any], workload: list[dict[str, Any]], options: ClusterBenchOptions
) -> dict[str, Any]:
    """One replay against coserve's application with every expert loaded on every node first."""
    return run_coserve(url, library, nodes, workload, options, warm=True)


def run_peer(
    url: str, library: str | None, nodes: dict[str, Any], workload: list[dict[str, Any]], options: ClusterBenchOptions
) -> dict[str, Any]:
    """One replay against the multiplexed peer; loads from its replicas' tally."""
    import ray

    from coserve.distributed.ray_peer import TALLY_NAMESPACE, LoadTally, PeerArgs, build_peer_app

    tally_name = f"coserve-bench-tally-{os.getpid()}-{time.monotonic_ns()}"
    tally: Any = ray.remote(num_cpus=0)(LoadTally).options(name=tally_name, namespace=TALLY_NAMESPACE).remote()
    per_replica = cluster_report.models_per_replica(nodes["budget"], nodes["footprints"])
    args = PeerArgs(library=library, replicas=options.nodes, models_per_replica=per_replica,
                    ingress_node=node_names(1)[0], tally=tally_name)  # fmt: skip
    try:
        deployed(build_peer_app(asdict(args)))
        result = _replayed(url, workload, options)
        result["loads_by_node"] = ray.get(tally.counts.remote(), timeout=CALL_TIMEOUT_S)
        result["loads"] = sum(sum(counts.values()) for counts in result["loads_by_node"].values())
        result["models_per_replica"] = per_replica
        return result
    finally:
        deleted()
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
        deployed(build_app(args.to_dict()))
        result = asyncio.run(killed_halfway())
    finally:
        deleted()
    outcomes = [r["outcome"] for r in result["requests"]]
    return {**cluster_report.fault_counts(outcomes), "killed": victim, "killed_at_s": at, "outcomes": outcomes}


def bench_cluster(library: LibraryConfig, options: ClusterBenchOptions) -> dict[str, Any]:
    """Run every policy ``options.runs`` times, alternating, then the fault run; print and return the figures."""
    if options.nodes < 2 or options.runs < 1 or options.requests < 2:
        from coserve.errors import ConfigError

        raise ConfigError("bench cluster: need --nodes >= 2, --runs >= 1 and --requests >= 2")
    started = time.monotonic()
    names = node_names(options.nodes)
    workload = make_workload(library, options.requests, options.rate, options.seed)
    counts = {e: sum(w["expert"] == e for w in workload) for e in library.expert_names}
    contenders = [("coserve", run_coserve), ("peer", run_peer)] + [("unbounded", run_unbounded)] * options.ceiling
    runs: dict[str, list[dict[str, Any]]] = {policy: [] for policy, _ in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        library_path = str(node_library(library, options.nodes, Path(tmp)))
        nodes = plan_nodes(library, names, Path(tmp), options.cold_load_weight)
        unbounded = plan_nodes(library, names, Path(tmp), options.cold_load_weight, everywhere=True)
        print(f"{options.nodes} nodes of {nodes['budget'] / 2**20:.0f} MiB ({cluster_report.BUDGET_RULE}); placement: "
              + "; ".join(f"{n}: {', '.join(r['experts']) or '-'}" for n, r in nodes["placement"].items()))  # fmt: skip
        print(f"workload: {options.requests} requests, Poisson {options.rate}/s, {options.max_tokens} tokens at "
              f"most, experts {counts}; {options.runs} alternating runs per policy", flush=True)  # fmt: skip
        fault: dict[str, Any] = {"skipped": "--no-fault"}
        with ray_cluster(names) as (cluster, ray_nodes, url):
            for repetition in range(options.runs):
                for policy, run in contenders:
                    try:
                        row = run(url, library_path, unbounded if policy == "unbounded" else nodes, workload, options)
                    except Exception as exc:  # recorded, never hidden: the policy's targets are then MISSED
                        row = {"error": f"{type(exc).__name__}: {exc}"}
                    runs[policy].append(row)
                    print(f"run {repetition + 1} {policy:<8} " + _line(row), flush=True)
            if options.fault:
                fault = run_fault(url, library_path, nodes, cluster, ray_nodes, workload, options)
                shown = [f"{k} {fault[k]}" for k in ("sent", "ok", "clean_errors", "lost", "killed") if k in fault]
                print(f"fault: {', '.join(shown) or fault.get('skipped')}", flush=True)
    result = _result(options, {"coserve": nodes, "unbounded": unbounded}, counts, runs, fault)
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
    planned: dict[str, dict[str, Any]],
    counts: dict[str, int],
    runs: dict[str, list[dict[str, Any]]],
    fault: dict[str, Any],
) -> dict[str, Any]:
    """The JSON: settings, placements (with the most memory each host reported), policies (with CPU
    seconds by role and service times per expert), fault, targets."""
    nodes = planned["coserve"]
    per_replica = cluster_report.models_per_replica(nodes["budget"], nodes["footprints"])
    placements = {policy: planned[policy]["placement"] for policy in ("coserve", "unbounded")}
    for policy, placement in placements.items():
        for row in runs.get(policy, []):
            for node, memory in row.get("memory", {}).items():
                measured = placement[node].setdefault("measured", {})
                for key in ("active_bytes", "ram_bytes"):
                    measured[key] = max(measured.get(key, 0), int(memory[key]))
    policies = {}
    for policy, rows in runs.items():
        policies[policy] = cluster_report.summarise_policy([_without_requests(r) for r in rows])
        done = [r for r in rows if "error" not in r]
        policies[policy]["service_s"] = cluster_report.service_times([q for r in done for q in r.get("requests", [])])
        policies[policy]["cpu_s"] = cluster_report.median_by_key([r.get("cpu_s", {}) for r in done])
    result = {
        "note": NOTE + (f"; {options.note}" if options.note else ""),
        "nodes": options.nodes,
        "settings": {**asdict(options), "node_budget_bytes": nodes["budget"], "budget_rule": cluster_report.BUDGET_RULE,
                     "threads_rule": THREADS_RULE, "threads": max(1, usable_cores() // options.nodes),
                     "footprints": nodes["footprints"], "ray_dashboard": DASHBOARD,
                     "peer_models_per_replica": per_replica},
        "workload": {"experts": counts},
        "placement": placements["coserve"],
        "policies": policies,
        "fault": fault,
    }  # fmt: skip
    if "unbounded" in runs:
        unbounded_budget = planned["unbounded"]["budget"]
        result["settings"].update(unbounded_budget_bytes=unbounded_budget, unbounded_rule=cluster_report.UNBOUNDED_RULE)
        result["unbounded_placement"] = placements["unbounded"]
    result["targets"] = cluster_report.targets(policies["coserve"], policies["peer"], fault, placements["coserve"],
                                policies.get("unbounded"))  # fmt: skip
    for name, row in result["targets"].items():
        print(f"target {name:<20} {row['value']} (want {row['want']}, median): {row['verdict']}")
    for policy, summary in policies.items():
        shown = ", ".join(f"{role} {seconds:.1f}" for role, seconds in summary["cpu_s"].items())
        print(f"{policy} CPU s by process (median run): {shown}")
    return result


def _without_requests(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "requests"}
