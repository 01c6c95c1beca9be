"""The cluster benchmark's peer: Ray Serve's own answer to many models, ONE deployment whose replicas
load experts by multiplexed model id (``@serve.multiplexed``), behind the same ingress as coserve's app.

``build_peer_app(args)`` binds:

* ``peer``: ``replicas`` replicas of ``PeerReplica``, at most one per node (``max_replicas_per_node=1``).
  A request names its expert as the multiplexed model id; Ray Serve's router sends it to a replica
  that has that model loaded, else to one with the fewest models (after a short wait, to any).
  A replica keeps at most ``models_per_replica`` experts loaded and unloads the least recently
  used one first (Ray's multiplexer, unchanged). An expert is loaded through coserve's own backend
  for it (``stage`` then ``load``, the llama.cpp runtime for the default library) and streamed
  with its ``n_parallel`` slots (coserve.distributed.ray_peer_model).
* ``ingress``: coserve's ingress (coserve.distributed.ray_app.Ingress: the FastAPI app, the router,
  admission, fallback, framing) whose one "host" is the multiplexed deployment. Both applications
  therefore route each prompt to the same expert with the same code; what differs is how the
  experts are served: placed by coserve's planner on nodes with their own engine and tiered pool,
  or multiplexed by Ray over replicas with an LRU each.

Cold loads are counted per replica and, when the builder is given a ``tally`` actor name (the
benchmark's), reported to that actor, since a deployment handle cannot address one replica.
This module imports Ray only inside a replica or a build (``coserve[ray]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from coserve.distributed.ray_app import Ingress, node_resource, require_ray
from coserve.distributed.ray_host import error_record, library_file, served_library
from coserve.distributed.ray_peer_model import PeerModel
from coserve.errors import ConfigError, CoserveError, ExpertFailed, NotFound
from coserve.types import Chunk, Request

__all__ = ["PEER_HOST", "TALLY_NAMESPACE", "LoadTally", "PeerArgs", "PeerIngress", "PeerReplica", "build_peer_app"]

PEER_HOST = "peer"  # the ingress's name for the multiplexed deployment (its one host)
TALLY_NAMESPACE = "coserve-bench"  # Ray namespace of the benchmark's load tally actor


@dataclass(frozen=True)
class PeerArgs:
    """The peer builder's arguments."""

    library: str | None = None  # library file; None: the bundled one
    replicas: int = 1  # replicas of the multiplexed deployment (one per node at most)
    models_per_replica: int = 1  # experts a replica keeps loaded (Ray's max_num_models_per_replica)
    ingress_node: str | None = None  # keep the ingress on this node (its coserve-node resource)
    tally: str | None = None  # name of a LoadTally actor (namespace TALLY_NAMESPACE) the replicas report loads to

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> PeerArgs:
        """Checked: an unknown key or a count below 1 is a ConfigError."""
        unknown = sorted(set(args) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"peer app args: unknown key {unknown[0]!r}")
        out = cls(**args)
        if out.replicas < 1 or out.models_per_replica < 1:
            raise ConfigError("peer app args: replicas and models_per_replica must be at least 1")
        return out


class LoadTally:
    """Cold loads reported by the peer's replicas: (node, expert) -> count (a Ray actor in the benchmark)."""

    def __init__(self) -> None:
        self.loads: Counter[tuple[str, str]] = Counter()

    def add(self, node: str, expert: str) -> None:
        self.loads[(node, expert)] += 1

    def counts(self) -> dict[str, dict[str, int]]:
        """Per node, loads per expert."""
        out: dict[str, dict[str, int]] = {}
        for (node, expert), count in sorted(self.loads.items()):
            out.setdefault(node, {})[expert] = count
        return out


class PeerReplica:
    """A replica of the multiplexed deployment (``build_peer_app`` adds the ``@serve.multiplexed`` loader)."""

    def __init__(self, library_path: str | None, tally: str | None = None):
        from coserve.backends.registry import get_backend

        self.library = served_library(library_path)
        self.base = self.library.path.parent if self.library.path else None
        self.backends = {spec.backend: get_backend(spec.backend) for spec in self.library.experts}
        self.executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="coserve-peer")
        self.models: dict[str, PeerModel] = {}  # the last model loaded per expert (loaded or released)
        self.loads: Counter[str] = Counter()
        self.node = _coserve_node()
        self._tally = _tally_actor(tally) if tally else None

    async def load_expert(self, expert: str) -> PeerModel:
        """Load ``expert`` (Ray's multiplexer calls this on a cache miss, through ``model``)."""
        if expert not in self.library.expert_names:
            raise NotFound(f"expert {expert!r} is not in the library", param="model")
        spec = self.library.expert(expert)
        model = await PeerModel.load(self.backends[spec.backend], spec, self.base, self.executor)
        self.models[expert] = model
        self.loads[expert] += 1
        if self._tally is not None:
            await self._tally.add.remote(self.node, expert)
        return model

    async def model(self, expert: str) -> PeerModel:
        """The loaded model of ``expert`` (replaced by Ray's multiplexed loader in a deployment)."""
        return await self.load_expert(expert)

    async def stream(self, request: Request, expert: str) -> AsyncIterator[Chunk | dict[str, Any]]:
        """Run ``request`` on ``expert`` here (the ingress's host call); chunks, or one error record."""
        try:
            model = await self.model(expert)
            async for chunk in model.run(request):  # entered at once: the model is held before any await
                yield chunk
        except CoserveError as exc:
            yield error_record(exc)
        except Exception as exc:  # a runtime's own failure: the expert failed, the replica did not
            yield error_record(ExpertFailed(f"expert {expert!r} failed on the peer: {type(exc).__name__}: {exc}"))

    def state(self) -> dict[str, Any]:
        """The node, and the experts loaded here as ACTIVE (what the ingress's book reads)."""
        return {"node": self.node, "tiers": {e: "active" for e, m in sorted(self.models.items()) if m.loaded}}

    def load_counts(self) -> dict[str, int]:
        return dict(self.loads)


class _ByExpert:
    """``.remote(request, expert, nodes)`` on the peer deployment with the expert as the multiplexed model id."""

    def __init__(self, handle: Any, options: dict[str, Any]):
        self.handle, self.options = handle, options

    def remote(self, request: Request, expert: str, nodes: Any = ()) -> Any:
        return self.handle.options(**self.options, multiplexed_model_id=expert).stream.remote(request, expert)


class _State:
    """``.remote(node)`` asks the peer deployment (one "node" for the ingress) for its state."""

    def __init__(self, handle: Any):
        self.handle = handle

    def remote(self, node: str) -> Any:
        return self.handle.state.remote()


class MultiplexedHost:
    """The peer deployment's handle, called as the ingress's engine calls the expert-host deployment
    (its one node is ``PEER_HOST``; Ray's multiplexed routing picks the replica)."""

    def __init__(self, handle: Any, options: dict[str, Any] | None = None):
        self.handle, self._options = handle, dict(options or {})

    @property
    def state(self) -> _State:
        return _State(self.handle)

    @property
    def stream(self) -> _ByExpert:
        return _ByExpert(self.handle, self._options)

    def options(self, **options: Any) -> MultiplexedHost:
        return MultiplexedHost(self.handle, {**self._options, **options})


class PeerIngress(Ingress):
    """coserve's ingress over the multiplexed deployment instead of per-node expert hosts."""

    def __init__(self, library_path: str | None, peer: Any, experts: list[str]):
        super().__init__(library_path, MultiplexedHost(peer), {PEER_HOST: experts})


def build_peer_app(args: dict[str, Any]) -> Any:
    """The peer application (a bound ingress over the multiplexed deployment) for these arguments."""
    require_ray()
    from ray import serve

    settings = PeerArgs.from_dict(args)
    library = served_library(settings.library)

    @serve.multiplexed(max_num_models_per_replica=settings.models_per_replica)
    async def model(self: PeerReplica, expert: str) -> PeerModel:  # Ray caches what it returns, LRU
        return await self.load_expert(expert)

    replica: Any = serve.deployment(type("MultiplexedPeerReplica", (PeerReplica,), {"model": model}))
    peer = replica.options(
        name="peer",
        num_replicas=settings.replicas,
        max_replicas_per_node=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=256,  # as coserve's expert hosts: the runtime's slots queue the rest
    ).bind(library_file(settings.library), settings.tally)
    ingress: Any = serve.deployment(serve.ingress()(PeerIngress))
    actor: dict[str, Any] = {"num_cpus": 0}
    if settings.ingress_node is not None:
        actor["resources"] = {node_resource(settings.ingress_node): 0.001}
    return ingress.options(name="ingress", num_replicas=1, ray_actor_options=actor).bind(
        library_file(settings.library), peer, list(library.expert_names)
    )


def _coserve_node() -> str:
    """The cluster-file node this replica runs on (its ``coserve-node-*`` resource), else Ray's node id."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            for resource in node.get("Resources", {}):
                if resource.startswith(node_resource("")):
                    return resource[len(node_resource("")) :]
    return str(node_id)


def _tally_actor(name: str) -> Any:
    import ray

    return ray.get_actor(name, namespace=TALLY_NAMESPACE)
