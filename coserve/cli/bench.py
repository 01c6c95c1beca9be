"""``coserve bench experts | route | serve``: the benchmarks, each writing its figures as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coserve.cli.common import Subcommands, add_library_arg, load_served_library

__all__ = ["add_bench_parser", "cmd_bench_experts", "cmd_bench_route", "cmd_bench_serve"]


def cmd_bench_experts(args: argparse.Namespace) -> int:
    from coserve.bench.experts import bench_experts

    result = bench_experts(load_served_library(args.library), tokens=args.tokens, repeats=args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_bench_route(args: argparse.Namespace) -> int:
    from coserve.bench.route import bench_route

    result = bench_route(load_served_library(args.library), n=args.n)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from coserve.bench.serve import bench_serve

    policies = tuple(args.policies.split(",")) if args.policies else None
    kwargs = {"policies": policies} if policies else {}
    result = bench_serve(load_served_library(args.library), n=args.n, rate=args.rate, max_tokens=args.max_tokens,
                         seed=args.seed, **kwargs)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def add_bench_parser(sub: Subcommands) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("experts", help="cold/warm time to first token, decode speed, routing time")
    add_library_arg(b)
    b.add_argument("--tokens", type=int, default=64, help="tokens to decode per measurement")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_experts)
    b = bench.add_parser("route", help="routing decision time (16/64/256 tokens) and batched throughput")
    add_library_arg(b)
    b.add_argument("--n", type=int, default=200, help="decisions per prompt length")
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_route)
    b = bench.add_parser("serve", help="serving policies and a real peer on one mixed workload")
    add_library_arg(b)
    b.add_argument("--n", type=int, default=48, help="requests")
    b.add_argument("--rate", type=float, default=2.0, help="Poisson arrival rate, requests/s")
    b.add_argument("--max-tokens", type=int, default=24)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--policies", help="comma-separated subset of load_per_request,lru,lookahead,all_resident,peer")
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_serve)
