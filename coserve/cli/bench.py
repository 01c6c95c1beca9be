"""``coserve bench experts | route | serve``: the benchmarks, each writing its figures as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from coserve.bench.provenance import write_data
from coserve.cli.common import Subcommands, add_library_arg, load_served_library

__all__ = ["add_bench_parser", "cmd_bench_experts", "cmd_bench_route", "cmd_bench_serve"]


def cmd_bench_experts(args: argparse.Namespace) -> int:
    from coserve.bench.experts import bench_experts

    result = bench_experts(load_served_library(args.library), tokens=args.tokens, repeats=args.repeats)
    if args.json:
        write_data(Path(args.json), result, args.command_line)
    return 0


def cmd_bench_route(args: argparse.Namespace) -> int:
    from coserve.bench.route import bench_route

    result = bench_route(load_served_library(args.library), n=args.n)
    if args.json:
        write_data(Path(args.json), result, args.command_line)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from coserve.bench.serve import run

    return run(load_served_library(args.library), args)


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
    b = bench.add_parser("serve", help="coserve's residencies and a real peer, alternating runs of one workload")
    add_library_arg(b)
    from coserve.bench.serve_options import add_arguments as bench_serve_arguments

    bench_serve_arguments(b)
    b.set_defaults(func=cmd_bench_serve)
