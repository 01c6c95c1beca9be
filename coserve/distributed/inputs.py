"""What the planner is given for a library, and what its placement reports: the inputs of
``coserve plan`` (coserve/cli/plan.py parses and prints) and of a later re-plan.

The expected traffic of an expert is the summed prior of the categories the map sends to it (the
library's ``router.priors``, equal when absent; a trained router's own map and priors). Footprints
come from the expert's backend (``Backend.footprint``: what the ACTIVE tier counts for it) unless the
cluster file's ``experts`` section gives them; an expert behind ``backend: openai`` is served
elsewhere and is not placed. Each expert's seconds of work per request (on a speed-1.0 node) is the
cluster file's ``experts.<name>.seconds_per_request`` (measured: e.g. ``coserve bench experts``'s
``ttft_warm_s + tokens / decode_tok_s``), else a first-order estimate (``estimated_seconds``): decoding
is bound by memory bandwidth, so a request of ``ESTIMATE_TOKENS`` tokens reads the weights
(``Backend.nbytes``) once per token at ``ESTIMATE_BANDWIDTH``. Only the ratios between experts change
a placement unless some are measured and some estimated. This module knows nothing about Ray.
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
    "estimated_seconds",
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
ESTIMATE_TOKENS = 128  # tokens a request decodes, for the first-order estimate of its work
ESTIMATE_BANDWIDTH = 20e9  # bytes/s a speed-1.0 node reads weights at (this host measures 13-41 GB/s)


def estimated_seconds(weight_bytes: int) -> float:
    """First-order seconds of one request: ESTIMATE_TOKENS tokens, each reading every weight once."""
    return ESTIMATE_TOKENS * max(weight_bytes, 1) / ESTIMATE_BANDWIDTH


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

    unknown = sorted(set(cluster.experts) - set(library.expert_names))
    if unknown:  # a misspelt name would leave its expert's footprint or cost silently unused
        raise ConfigError(
            f"cluster file experts.{unknown[0]}: the library has no expert of that name "
            f"(its experts: {', '.join(library.expert_names)})"
        )
    base = library.path.parent if library.path else None
    out: dict[str, Footprint] = {}
    for spec in library.experts:
        given = cluster.experts.get(spec.name)
        seconds = given.seconds_per_request if given is not None else None
        if given is not None and given.ram is not None:  # the host memory given stands for the weights
            out[spec.name] = Footprint(given.ram, given.accelerator, seconds or estimated_seconds(given.ram))
            continue
        if spec.backend in REMOTE_BACKENDS:
            continue
        backend = get_backend(spec.backend)
        try:
            active, weights = backend.footprint(spec, base), backend.nbytes(spec, base)
            seconds = seconds or estimated_seconds(weights)
            # On a GPU the loaded runtime is on the device and the host keeps the RAM tier's copy.
            out[spec.name] = Footprint(weights, active, seconds) if on_device(spec) else Footprint(active, 0, seconds)
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
    """The placement as JSON-ready data: per node its experts, memory, request share and compute load;
    per expert its replicas and seconds per request."""
    from coserve.distributed.placement import expert_costs

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
                "compute_load": round(placement.compute_load(node.name), 6),
            }
        )
    experts = {e: len(placement.replicas_of(e)) for e in sorted({r.expert for r in placement.replicas})}
    return {
        "nodes": nodes,
        "replicas": experts,
        "traffic": {e: round(t, 6) for e, t in sorted(placement.traffic.items())},
        "seconds_per_request": {
            e: round(w, 6) for e, w in sorted(expert_costs(placement.footprints, placement.traffic).items())
        },
        "speeds": {n.name: n.speed for n in placement.nodes},
        "busiest_load": round(placement.busiest_load, 6),
        "busiest_share": round(max(placement.load(n.name) for n in placement.nodes), 6),
        "cold_share": round(placement.cold_share, 6),
        "gap": placement.gap,
    }
