"""The options of ``coserve bench serve``, apart from the benchmark so that building the CLI's
parser imports nothing heavy, and their checks, run before the benchmark starts anything. It knows
nothing about how the benchmark runs."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from coserve.errors import ConfigError

__all__ = ["CONTENDERS", "add_arguments", "checked_contenders"]

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


def checked_contenders(args: argparse.Namespace, max_tokens_cap: int) -> tuple[str, ...]:
    """The contenders to run, once every option is checked: a ConfigError names the first one out of
    range (a run of minutes must not end in a traceback, nor its figures fail to be written)."""
    contenders = tuple(args.contenders.split(",")) if args.contenders else CONTENDERS
    unknown = sorted(set(contenders) - set(CONTENDERS))
    problems = [
        (bool(unknown), f"unknown contenders {unknown} (known: {', '.join(CONTENDERS)})"),
        (len(set(contenders)) < len(contenders), "--contenders names a contender twice"),
        (args.n < 1, "--n must be at least 1"),
        (not (math.isfinite(args.rate) and args.rate > 0), "--rate must be a positive number of requests/s"),
        (not 1 <= args.max_tokens <= max_tokens_cap, f"--max-tokens must be between 1 and {max_tokens_cap}"),
        (args.repeats < 1, "--repeats must be at least 1"),
    ]
    for problem, message in problems:
        if problem:
            raise ConfigError(message)
    if args.json:
        _check_writable(Path(args.json))
    return contenders


def _check_writable(path: Path) -> None:
    """Whether a file can be written at ``path`` (its folders made, as the writer will)."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "a folder is in its place")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        raise ConfigError(f"--json {path}: cannot write it ({exc.strerror or exc})") from None
