"""``coserve plan``: read a cluster file and a library, measure footprints, derive the expected
traffic, plan, and print (or write as JSON) the placement with each node's memory and load."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coserve.distributed.inputs import GiB, placement_report, plan_library

__all__ = ["add_plan_arguments", "plan_command"]


def _format(report: dict[str, Any], remote: list[str]) -> str:
    lines = [f"{'node':<12} {'compute':>7} {'requests':>8} {'ram used/budget':>21} {'accel used/budget':>21}  experts"]
    for node in report["nodes"]:
        experts = ", ".join(
            f"{r['expert']}{'' if r['resident'] else ' (swapped)'} {r['share']:.1%}" for r in node["experts"]
        )
        lines.append(
            f"{node['name']:<12} {node['compute_load']:>7.1%} {node['load']:>8.1%} "
            f"{node['ram_bytes'] / GiB:>9.2f}/{node['ram_budget_bytes'] / GiB:.2f} GiB "
            f"{node['accelerator_bytes'] / GiB:>9.2f}/{node['accelerator_budget_bytes'] / GiB:.2f} GiB  "
            f"{experts or '-'}"
        )
    shares = ", ".join(f"{e} {t:.1%} ({report['replicas'].get(e, 0)}x)" for e, t in report["traffic"].items())
    lines.append(f"expected traffic (replicas): {shares}")
    costs = ", ".join(f"{e} {w:.3g} s" for e, w in report["seconds_per_request"].items())
    speeds = ", ".join(f"{n} {s:g}" for n, s in report["speeds"].items())
    lines.append(f"work per request (speed 1.0): {costs}; node speeds: {speeds}")
    lines.append(
        f"busiest node: {report['busiest_load']:.1%} of the compute ({report['busiest_share']:.1%} of requests "
        f"at most on one node); served by swapped replicas "
        f"(cold-load bound): {report['cold_share']:.1%}"
        + (f"; solver gap {report['gap']:.2%} (time limit)" if report["gap"] > 1e-4 else "")
    )
    if remote:
        lines.append(f"served elsewhere (backend openai, not placed): {', '.join(remote)}")
    return "\n".join(lines)


def plan_command(args: argparse.Namespace) -> int:
    """Run ``coserve plan``."""
    from coserve.backends.registry import check_library
    from coserve.bench.provenance import write_data
    from coserve.config import load_library
    from coserve.distributed.cluster import load_cluster
    from coserve.router.measured import with_measured_map

    library = with_measured_map(check_library(load_library(args.library)))
    placement, remote = plan_library(library, load_cluster(args.cluster))
    report = placement_report(placement)
    print(_format(report, remote))
    if args.json:  # with its provenance, like every figure a doc may quote
        library_name = str(args.library) if args.library else "the bundled default library"  # as given: no host path
        payload = {"library": library_name, "cluster": str(args.cluster), **report}
        write_data(Path(args.json), payload, getattr(args, "command_line", None))
    return 0


def add_plan_arguments(subparsers: Any) -> None:
    """Register ``coserve plan`` on the CLI's subparsers."""
    p = subparsers.add_parser("plan", help="place the library's experts on a cluster's nodes (MILP)")
    p.add_argument("--cluster", required=True, help="cluster file (YAML): nodes with ram and accelerator memory")
    p.add_argument("--library", help="library file (default: the bundled library)")
    p.add_argument("--json", help="also write the placement as JSON here")
    p.set_defaults(func=plan_command)
