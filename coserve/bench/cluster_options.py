"""The options of ``coserve bench cluster``, apart from the benchmark so that building the CLI's parser
imports nothing heavy. It knows nothing about how the benchmark runs."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``coserve bench cluster`` (besides ``--library``)."""
    parser.add_argument("--nodes", type=int, required=True, help="simulated nodes (Ray raylets on this host), >= 2")
    parser.add_argument("--json", required=True, help="write the figures (with provenance) to this file")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per policy (default 3)")
    parser.add_argument("--requests", type=int, default=24, help="requests per run")
    parser.add_argument("--rate", type=float, default=2.0, help="Poisson arrival rate, requests/s")
    parser.add_argument("--max-tokens", type=int, default=24, help="answer cap per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a run may last after its last arrival")
    parser.add_argument("--no-fault", action="store_true", help="skip the run that kills a node halfway")
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the unbounded contender: every expert resident on every node, the most this compute "
        "gives (default on; --no-ceiling saves a third of the time)",
    )
    parser.add_argument("--note", help="added to the JSON's note (say if the machine was shared)")
    parser.add_argument(
        "--cold-load-weight",
        type=float,
        help="the planner's cold_load_weight in the generated cluster file (default: the cluster file's default)",
    )
