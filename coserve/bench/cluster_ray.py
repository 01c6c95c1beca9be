"""The Ray side of ``coserve bench cluster``: Ray's multi-node test cluster with Serve on a loopback
port, deploying and deleting one application on it, calling an expert host, and a deadline on each.

Every start and stop is bounded in time; Serve, the driver and every raylet stop however the
benchmark ends. This module knows nothing about the workload or the figures.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from coserve.bench.processes import free_port

__all__ = [
    "APP",
    "DASHBOARD",
    "deadline",
    "deleted",
    "deployed",
    "host_call",
    "ray_cluster",
    "replica_processes",
    "warmed",
]

APP = "coserve-bench"
START_TIMEOUT_S = 300  # starting the raylets, or one application (routers, runtimes) on a busy host
STOP_TIMEOUT_S = 120
CALL_TIMEOUT_S = 30.0  # a deployment handle call (counts, health)
OBJECT_STORE_BYTES = 128 * 2**20  # per raylet: only small request objects cross
EXIT_POLL_S = 0.5  # how often replicas' exit and experts' loading are checked
DASHBOARD = False  # Ray's dashboard is off for every contender (its process and agents cost CPU)


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
    cluster = Cluster(initialize_head=True, head_node_args={**node_args(names[0]), "include_dashboard": DASHBOARD})
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


def deployed(app: Any) -> None:
    """Run ``app`` as the benchmark's application (replacing any), within START_TIMEOUT_S."""
    from ray import serve

    with deadline(START_TIMEOUT_S, "starting the application"):
        serve.run(app, name=APP, route_prefix="/")


def deleted() -> None:
    """Delete the benchmark's application and wait until its replicas' processes have exited (quietly,
    within STOP_TIMEOUT_S): ``serve.delete`` returns while they still shut down (unloading their
    models), and they must not spend the next run's CPU."""
    from ray import serve

    with contextlib.suppress(Exception), deadline(STOP_TIMEOUT_S, "deleting the application"):
        serve.delete(APP)
        while replica_processes(APP):
            time.sleep(EXIT_POLL_S)


def replica_processes(app: str) -> list[int]:
    """The pids of the processes this one started that are replicas of ``app`` (Ray titles them
    ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    from coserve.bench.cluster_cpu import ours

    title = f"ray::ServeReplica:{app}:"
    pids = []
    for process in ours():
        try:
            cmdline = process.cmdline()
        except psutil.Error:  # it ended meanwhile
            continue
        if cmdline and cmdline[0].startswith(title):
            pids.append(process.pid)
    return pids


def warmed(nodes: list[str]) -> float:
    """Wait until every expert placed on each node's host is ACTIVE there (within START_TIMEOUT_S);
    the seconds it took."""
    started = time.monotonic()
    with deadline(START_TIMEOUT_S, "loading every placed expert"):
        while True:
            tiers = [tier for node in nodes for tier in host_call(node, "state")["tiers"].values()]
            if tiers and all(tier == "active" for tier in tiers):
                return time.monotonic() - started
            time.sleep(EXIT_POLL_S)


def host_call(node: str, method: str) -> Any:
    """``method(node)`` on that node's expert host (its request router sends the call there)."""
    from ray import serve

    from coserve.distributed.ray_app import HOSTS

    handle = serve.get_deployment_handle(HOSTS, app_name=APP)
    return getattr(handle, method).remote(node).result(timeout_s=CALL_TIMEOUT_S)
