"""``coserve plan``: read a cluster file and a library, measure footprints, derive the expected
traffic, plan, and print (or write as JSON) the placement with each node's memory and load.

The expected traffic of an expert is the summed prior of the categories the map sends to it (the
library's ``router.priors``, equal when absent; a trained router's own map and priors). Footprints
come from the expert's backend (``Backend.footprint``: what the ACTIVE tier counts for it) unless the
cluster file's ``experts`` section gives them; an expert behind ``backend: openai`` is served
elsewhere and is not placed. This module knows nothing about Ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coserve.errors import ConfigError, CoserveError

if TYPE_CHECKING:  # the CLI registers this command on every start: its heavy imports wait for a run
    from coserve.config import LibraryConfig
    from coserve.distributed.cluster import Cluster, Footprint
    from coserve.distributed.placement import Placement

__all__ = [
    "add_plan_arguments",
    "expected_traffic",
    "library_footprints",
    "placement_report",
    "plan_command",
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


def _on_device(spec: Any) -> bool:
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
            out[spec.name] = Footprint(backend.nbytes(spec, base), active) if _on_device(spec) else Footprint(active)
        except (CoserveError, OSError) as exc:
            raise ConfigError(
                f"expert {spec.name!r}: footprint unknown ({exc}); assemble its model file or give "
                f"experts.{spec.name}.ram in the cluster file"
            ) from None
    return out


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


def _format(report: dict[str, Any], remote: list[str]) -> str:
    lines = [f"{'node':<12} {'load':>6} {'ram used/budget':>21} {'accel used/budget':>21}  experts"]
    for node in report["nodes"]:
        experts = ", ".join(
            f"{r['expert']}{'' if r['resident'] else ' (swapped)'} {r['share']:.1%}" for r in node["experts"]
        )
        lines.append(
            f"{node['name']:<12} {node['load']:>6.1%} "
            f"{node['ram_bytes'] / GiB:>9.2f}/{node['ram_budget_bytes'] / GiB:.2f} GiB "
            f"{node['accelerator_bytes'] / GiB:>9.2f}/{node['accelerator_budget_bytes'] / GiB:.2f} GiB  "
            f"{experts or '-'}"
        )
    shares = ", ".join(f"{e} {t:.1%} ({report['replicas'].get(e, 0)}x)" for e, t in report["traffic"].items())
    lines.append(f"expected traffic (replicas): {shares}")
    lines.append(
        f"busiest node: {report['busiest_load']:.1%} of requests; served by swapped replicas "
        f"(cold-load bound): {report['cold_share']:.1%}"
        + (f"; solver gap {report['gap']:.2%} (time limit)" if report["gap"] > 1e-4 else "")
    )
    if remote:
        lines.append(f"served elsewhere (backend openai, not placed): {', '.join(remote)}")
    return "\n".join(lines)


def plan_command(args: argparse.Namespace) -> int:
    """Run ``coserve plan``."""
    from coserve.backends.registry import check_library
    from coserve.config import load_library
    from coserve.distributed.cluster import load_cluster
    from coserve.distributed.planner import plan
    from coserve.router.measured import with_measured_map

    library = with_measured_map(check_library(load_library(args.library)))
    cluster = load_cluster(args.cluster)
    footprints = library_footprints(library, cluster)
    traffic = {e: t for e, t in expected_traffic(library).items() if e in footprints}
    used = set(routed_map(library)[0].values()) | {library.router.fallback.expert}
    remote = sorted(e for e in library.expert_names if e not in footprints)
    placement = plan(cluster, footprints, traffic, required=sorted(used & set(footprints)))
    report = placement_report(placement)
    print(_format(report, remote))
    if args.json:  # with its provenance, like every figure a doc may quote
        from coserve.bench.provenance import write_data

        payload = {"library": str(library.path), "cluster": str(args.cluster), **report}
        write_data(Path(args.json), payload, getattr(args, "command_line", None))
    return 0


def add_plan_arguments(subparsers: Any) -> None:
    """Register ``coserve plan`` on the CLI's subparsers."""
    p = subparsers.add_parser("plan", help="place the library's experts on a cluster's nodes (MILP)")
    p.add_argument("--cluster", required=True, help="cluster file (YAML): nodes with ram and accelerator memory")
    p.add_argument("--library", help="library file (default: the bundled library)")
    p.add_argument("--json", help="also write the placement as JSON here")
    p.set_defaults(func=plan_command)
