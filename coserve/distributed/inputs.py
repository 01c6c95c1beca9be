"""What the planner is given for a library, and what its placement reports: the inputs of
``coserve plan`` (coserve/cli/plan.py parses and prints) and of a later re-plan.

The expected traffic of an expert is the summed prior of the categories the map sends to it (the
library's ``router.priors``, equal when absent; a trained router's own map and priors). Footprints
come from the expert's backend (``Backend.footprint``: what the ACTIVE tier counts for it) unless the
cluster file's ``experts`` section gives them; an expert behind ``backend: openai`` is served
elsewhere and is not placed. This module knows nothing about Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from coserve.errors import ConfigError, CoserveError

if TYPE_CHECKING:  # the CLI imports this on every start: heavy imports wait for a run
    from coserve.config import LibraryConfig
    from coserve.distributed.cluster import Cluster, Footprint
    from coserve.distributed.placement import Placement

__all__ = [
    "expected_traffic",
    "library_footprints",
    "on_device",
    "placement_report",
    "plan_inputs",
    "plan_library",
    "routed_map",
]

REMOTE_BACKENDS = ("openai",)  # the model lives behind someone else's endpoint
GiB = 2**30


def routed_map(library: LibraryConfig) -> tuple[dict[str, str], dict[str, float]]:
    """The library's category -> expert map and its category priors (equal when none are given)."""
    router = library.router
    if router.trained is None:
        mapping = dict(router.map)
        return mapping, {c: router.priors.get(c, 0.0) if router.priors else 1.0 for c in mapping}
    from coserve.router.trained import load_trained

    base = library.path.parent if library.path else Path.cwd()
    trained = load_trained(base / router.trained)
    if not trained.assignment:
        raise ConfigError(f"router.trained: a {trained.kind} router has no category map to derive traffic from")
    mapping = {c: trained.experts[e] for c, e in zip(trained.classes, trained.assignment, strict=True)}
    return mapping, {c: float(p) for c, p in zip(trained.classes, trained.p, strict=True)}


def expected_traffic(library: LibraryConfig) -> dict[str, float]:
    """Share of requests each expert is expected to get: the map times the category priors."""
    mapping, priors = routed_map(library)
    total = sum(priors.values())
    traffic = dict.fromkeys(library.expert_names, 0.0)
    for category, expert in mapping.items():
        traffic[expert] += priors.get(category, 0.0) / total if total > 0 else 0.0
    return traffic


def on_device(spec: Any) -> bool:
    """Whether the expert's runtime holds its weights on an accelerator."""
    options = spec.options
    return (
        spec.backend == "vllm"
        or str(options.get("device", "cpu")).startswith("cuda")
        or int(options.get("n_gpu_layers", 0) or 0) != 0
    )


def library_footprints(library: LibraryConfig, cluster: Cluster) -> dict[str, Footprint]:
    """Each placeable expert's footprint: the cluster file's, else its backend's measure."""
    from coserve.backends.registry import get_backend
    from coserve.distributed.cluster import Footprint

    base = library.path.parent if library.path else None
    out: dict[str, Footprint] = {}
    for spec in library.experts:
        if spec.name in cluster.experts:
            out[spec.name] = cluster.experts[spec.name].footprint()
            continue
        if spec.backend in REMOTE_BACKENDS:
            continue
        backend = get_backend(spec.backend)
        try:
            active = backend.footprint(spec, base)
            # On a GPU the loaded runtime is on the device and the host keeps the RAM tier's copy.
            out[spec.name] = Footprint(backend.nbytes(spec, base), active) if on_device(spec) else Footprint(active)
        except (CoserveError, OSError) as exc:
            raise ConfigError(
                f"expert {spec.name!r}: footprint unknown ({exc}); assemble its model file or give "
                f"experts.{spec.name}.ram in the cluster file"
            ) from None
    return out


def plan_inputs(
    library: LibraryConfig, cluster: Cluster
) -> tuple[dict[str, Footprint], dict[str, float], list[str], list[str]]:
    """What the planner is given for the library: footprints, expected traffic and required experts
    (of the placeable experts), and the experts served elsewhere (``backend: openai``), not placed."""
    footprints = library_footprints(library, cluster)
    traffic = {e: t for e, t in expected_traffic(library).items() if e in footprints}
    used = set(routed_map(library)[0].values()) | {library.router.fallback.expert}
    remote = sorted(e for e in library.expert_names if e not in footprints)
    return footprints, traffic, sorted(used & set(footprints)), remote


def plan_library(library: LibraryConfig, cluster: Cluster) -> tuple[Placement, list[str]]:
    """Plan the library's placeable experts on the cluster; also returns the experts served
    elsewhere (``backend: openai``), which are not placed."""
    from coserve.distributed.planner import plan

    footprints, traffic, required, remote = plan_inputs(library, cluster)
    return plan(cluster, footprints, traffic, required=required), remote


def placement_report(placement: Placement) -> dict[str, Any]:
    """The placement as JSON-ready data: per node its experts, memory and load; per expert its replicas."""
    nodes = []
    for node in placement.nodes:
        ram, accelerator = placement.used(node.name)
        nodes.append(
            {
                "name": node.name,
                "experts": [
                    {"expert": r.expert, "resident": r.resident, "share": round(r.share, 6)}
                    for r in placement.on(node.name)
                ],
                "ram_bytes": ram,
                "ram_budget_bytes": node.ram,
                "accelerator_bytes": accelerator,
                "accelerator_budget_bytes": node.accelerator,
                "load": round(placement.load(node.name), 6),
            }
        )
    experts = {e: len(placement.replicas_of(e)) for e in sorted({r.expert for r in placement.replicas})}
    return {
        "nodes": nodes,
        "replicas": experts,
        "traffic": {e: round(t, 6) for e, t in sorted(placement.traffic.items())},
        "busiest_load": round(placement.busiest_load, 6),
        "cold_share": round(placement.cold_share, 6),
        "gap": placement.gap,
    }
