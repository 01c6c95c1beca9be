"""The options of ``coserve bench serve``, apart from the benchmark so that building the CLI's
parser imports nothing heavy. It knows nothing about how the benchmark runs."""

from __future__ import annotations

import argparse

__all__ = ["CONTENDERS", "add_arguments"]

CONTENDERS = ("load_per_request", "lru", "lookahead", "all_resident", "peer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``coserve bench serve`` (besides ``--library``)."""
    parser.add_argument("--n", type=int, default=48, help="requests per run")
    parser.add_argument("--rate", type=float, default=2.0, help="Poisson arrival rate, requests/s")
    parser.add_argument("--max-tokens", type=int, default=24, help="answer cap per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per contender (default 3)")
    parser.add_argument("--allow-repeats", action="store_true", help="a prompt may be drawn more than once")
    parser.add_argument("--contenders", help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--no-switch", action="store_true", help="skip the switch measurement")
    parser.add_argument("--json", help="also write the figures (with provenance) to this file")
