"""The Ray Serve application: an ingress deployment (coserve's FastAPI app and router) over one
expert-host deployment with a replica per node.

``build_app(args)`` is the application builder that ``serve run`` / ``serve deploy`` / a KubeRay
RayService name as ``coserve.distributed.ray_app:build_app`` (``coserve deploy --ray-config``
writes that config; ``coserve serve --ray`` runs it). It reads the library and the cluster file,
plans the placement (coserve.distributed.inputs.plan_inputs and the planner), and binds:

* ``expert-host``: one replica of ``NodeHost`` (coserve.distributed.ray_node_host) per node of the
  cluster file. Each replica takes one unit of the custom resource ``coserve-host`` that a Ray node
  carries once per cluster-file node it is started for, next to ``coserve-node-<node>``
  (``ray start --resources='{"coserve-node-<node>": 1, "coserve-host": 1}'``, ``node_resources``),
  finds out which node it landed on and serves the experts placed there. Its request router
  (coserve.distributed.ray_router, ``request_router_config``) sends each call to the right replica;
* ``placement``: one replica of the placement controller (coserve.distributed.ray_placement), which
  re-plans when nodes leave or join or traffic drifts and moves experts between the hosts;
* ``quota`` and ``decision-log``: one replica each (coserve.distributed.cluster_state), the API-key
  counters and the decision log that every ingress replica shares (the log's deployment also
  carries the dashboard's live feed for the cluster, coserve.distributed.shared_feed, and, with
  ``router.online``, the cluster's one online router, coserve.distributed.shared_online);
* ``ingress``: the same FastAPI app as the single process (coserve.server.app.create_app) through
  ``@serve.ingress``, over a ``ClusterEngine`` (coserve.distributed.ray_engine) holding the hosts'
  deployment handle and following the controller's placement; its replicas scale with the
  request rate (Ray Serve autoscaling).

Ray is imported only when an application is built (``coserve[ray]``); importing this module needs
no Ray. This module knows nothing about HTTP handlers or the pool: it wires deployments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from coserve.distributed.ray_host import library_file, served_library
from coserve.distributed.ray_node_host import HOST_RESOURCE, NodeHost
from coserve.distributed.ray_placement import NODE_PREFIX, PLACEMENT, PlacementService
from coserve.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from coserve.config import LibraryConfig
    from coserve.distributed.cluster import Cluster, Footprint
    from coserve.distributed.placement import Placement
    from coserve.distributed.ray_engine import ClusterEngine

__all__ = [
    "APP_BUILDER",
    "HOSTS",
    "AppArgs",
    "Ingress",
    "build_app",
    "local_cluster",
    "node_resource",
    "node_resources",
    "require_ray",
]

APP_BUILDER = "coserve.distributed.ray_app:build_app"  # the import path Ray Serve configs name
RAY_EXTRA_HINT = "Ray Serve is not installed: pip install 'coserve[ray]'"
HOSTS = "expert-host"  # the expert-host deployment's name
ROUTING_STATS_PERIOD_S = 1.0  # how often Ray Serve reads each host's tiers and load for its router
# Requests an ingress replica takes at once besides the chat requests its admission share bounds
# (/health, /metrics, /v1/models, feedback, open dashboard feeds). Ray's default cap (5) sat below
# the autoscaling target and the share, and the rest waited in Ray's proxy, unseen by coserve.
INGRESS_OTHER_REQUESTS = 64


def require_ray() -> None:
    """Raise a ConfigError naming the extra when Ray Serve is not installed."""
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_EXTRA_HINT) from None


def node_resource(node: str) -> str:
    """The Ray custom resource that holds a node's expert host on that node."""
    return f"{NODE_PREFIX}{node}"


def node_resources(*nodes: str) -> dict[str, float]:
    """The custom resources of a Ray node started for these cluster-file nodes (usually one)."""
    return {**{node_resource(n): 1.0 for n in nodes}, HOST_RESOURCE: float(len(nodes))}


@dataclass(frozen=True)
class AppArgs:
    """The builder's arguments (the ``args`` of a Ray Serve config's application)."""

    library: str | None = None  # library file; None: the bundled one
    cluster: str | None = None  # cluster file; None: one node, "local", with the library's RAM budget
    min_replicas: int = 1  # ingress autoscaling bounds
    max_replicas: int = 4
    target_ongoing_requests: float = 8.0  # per ingress replica, what Ray Serve's autoscaler aims at
    ingress_node: str | None = None  # keep the ingress replicas on this node (its coserve-node resource)

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> AppArgs:
        """Checked: an unknown key is a ConfigError naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"ray app args: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        out = cls(**args)
        where = "the Serve config's application args"
        if out.min_replicas < 1:
            raise ConfigError(f"{where}: min_replicas ({out.min_replicas}) must be at least 1")
        if out.min_replicas > out.max_replicas:
            raise ConfigError(f"{where}: min_replicas ({out.min_replicas}) is above max_replicas ({out.max_replicas})")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The arguments as a Ray Serve config writes them (paths made absolute)."""
        return {
            "library": library_file(self.library),
            "cluster": library_file(self.cluster),
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "ingress_node": self.ingress_node,
        }


def local_cluster(library: LibraryConfig) -> Cluster:
    """One node, ``local``, with the library's RAM budget: a cluster file for a single machine."""
    from coserve.distributed.cluster import Cluster, NodeSpec

    return Cluster(nodes=(NodeSpec(name="local", ram=library.memory.ram),))


def planned(args: AppArgs) -> tuple[LibraryConfig, Cluster, dict[str, Footprint], Placement]:
    """The library, the cluster, every placeable expert's footprint, and the placement planned at start."""
    from coserve.distributed.cluster import load_cluster
    from coserve.distributed.inputs import plan_inputs
    from coserve.distributed.planner import plan

    library = served_library(args.library)
    cluster = load_cluster(args.cluster) if args.cluster else local_cluster(library)
    footprints, traffic, required, _ = plan_inputs(library, cluster)
    return library, cluster, footprints, plan(cluster, footprints, traffic, required=required)


def placed_experts(args: AppArgs) -> tuple[Cluster, dict[str, list[str]]]:
    """The cluster and, per node with any, the experts the planner placed on it at start."""
    _, cluster, _, placement = planned(args)
    placed = {node.name: [r.expert for r in placement.on(node.name)] for node in cluster.nodes}
    return cluster, {node: experts for node, experts in placed.items() if experts}


class Ingress:
    """The ingress replica: coserve's FastAPI app over a ClusterEngine (made a deployment by build_app)."""

    def __init__(
        self,
        library_path: str | None,
        hosts: Any,
        placed: dict[str, list[str]],
        controller: Any = None,
        quota: Any = None,
        decision_log: Any = None,
    ):
        from coserve.distributed.cluster_state import replica_name
        from coserve.distributed.ray_engine import ClusterEngine
        from coserve.paths import cache_dir

        self.engine = cast("ClusterEngine", ClusterEngine.build(served_library(library_path), cache_dir()))
        self.engine.attach(hosts, placed, controller, replica_name())
        self.shared = (quota, decision_log)  # handles of the quota and decision-log deployments, or None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray Serve calls this once the replica is made: the same app as the single process."""
        from coserve.server.app import create_app

        if self.engine.controller is not None:
            await self.engine.sync()  # the placement in force now (a replica may start after a change)
        await self.engine.refresh_all()  # the hosts' tiers, before the first request is chosen for
        self.engine.follow()
        quota_handle, log_handle = self.shared
        if quota_handle is None or log_handle is None:
            app = create_app(self.engine)
        else:
            from coserve.distributed.cluster_state import ingress_state, mark_replica
            from coserve.distributed.shared_feed import ClusterFeed

            quota, decisions = await ingress_state(self.engine.library, quota_handle, log_handle)
            router = self.engine.router
            if router.online is not None and router.trained is not None:  # the cluster's one learner's map
                from coserve.distributed.shared_online import ClusterOnline

                online = ClusterOnline(self.engine.library, router.trained, log_handle, self.engine.replica)
                router.online = online.start()
            feed = ClusterFeed(log_handle, self.engine.replica).start()  # the dashboard sees the cluster
            app = create_app(self.engine, quota=quota, decisions=decisions, feed=feed)
            app = mark_replica(app, self.engine.replica)
        if self.engine.controller is not None:  # the admission bounds hold for the cluster
            self.engine.share_admission(app.state.admission)
        return app


def build_app(args: dict[str, Any]) -> Any:
    """The Ray Serve application (a bound ingress over its hosts) for these builder arguments."""
    require_ray()
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from coserve.distributed.cluster_state import QUIET, bind_shared_state
    from coserve.distributed.ray_router import ROUTER_CLASS

    settings = AppArgs.from_dict(args)
    served, cluster, footprints, placement = planned(settings)
    library = library_file(settings.library)
    placed = {node.name: [r.expert for r in placement.on(node.name)] for node in cluster.nodes}
    resident = {node.name: [r.expert for r in placement.on(node.name) if r.resident] for node in cluster.nodes}
    host: Any = serve.deployment(NodeHost)
    hosts = host.options(
        name=HOSTS,
        num_replicas=len(cluster.nodes),  # every node gets a host: a re-plan may place experts on any of them
        # One coserve-host unit each, so one replica per cluster-file node; the node's own engine
        # decides what runs: CPUs are not reserved through Ray.
        ray_actor_options={"num_cpus": 0, "resources": {HOST_RESOURCE: 1}},
        max_ongoing_requests=256,
        logging_config=QUIET,
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER_CLASS,  # type: ignore[arg-type]  # pydantic fields, not the stub's
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,  # type: ignore[arg-type]
        ),
    ).bind(library, cluster, placed, resident)
    placement_service: Any = serve.deployment(PlacementService)
    controller = placement_service.options(
        name=PLACEMENT,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,
        logging_config=QUIET,
    )
    ingress: Any = serve.deployment(serve.ingress()(Ingress))
    ingress_actor: dict[str, Any] = {"num_cpus": 0}
    if settings.ingress_node is not None:  # a node that dies takes its ingress replicas' connections along
        ingress_actor["resources"] = {node_resource(settings.ingress_node): 0.001}
    pin = node_resource(settings.ingress_node) if settings.ingress_node is not None else None
    quota, decision_log = bind_shared_state(library, pin)
    bound_controller = controller.bind(cluster, footprints, placement, hosts, decision_log=decision_log)
    return ingress.options(
        name="ingress",
        ray_actor_options=ingress_actor,
        max_ongoing_requests=served.server.max_pending + INGRESS_OTHER_REQUESTS,
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        },
    ).bind(library, hosts, placed, bound_controller, quota, decision_log)
