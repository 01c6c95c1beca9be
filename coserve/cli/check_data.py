"""``coserve check-data``: what outcome files hold and which commands would take them, before any work.

The summary and the readers' verdict are ``coserve.eval.outcome_check``'s; this module adds the
checks of the commands that live elsewhere (``bench adapt``, ``compare``, the cascade's ``train-check``),
each the command's own, and prints. Nothing is embedded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from coserve.cli.common import Subcommands, at_least, check_outputs

__all__ = ["add_check_data_parser", "cmd_check_data"]


def _adapt(path: str, outcomes: Any) -> str | None:
    """``bench adapt`` on this file alone: the router is fitted on one half of it (as run_adapt splits it)."""
    from coserve.bench.adapt import CALIBRATION_FOLDS
    from coserve.bench.adapt_fit import FOLDS_SEED, split_by_prompt
    from coserve.eval.data import check_foldable

    half = outcomes.subset(split_by_prompt(outcomes)[0])
    if len(set(half.categories)) > 1:
        check_foldable(f"{path} (the half the router is fitted on)", half.prompts, CALIBRATION_FOLDS, FOLDS_SEED)
    return None


def _compare(path: str, outcomes: Any) -> str | None:
    from coserve.errors import ConfigError
    from coserve.outcomes.runner import ROUTED

    if ROUTED not in outcomes.experts:
        raise ConfigError(f"no row scores {ROUTED!r}: write the file with coserve outcomes --routed")
    return f"{ROUTED!r} is scored like an expert: leave it out of the files train and eval read"


def _cascade(path: str, outcomes: Any) -> str | None:
    from coserve.errors import ConfigError
    from coserve.eval.cascade import read_signal_rows

    if path.lower().endswith(".csv"):
        raise ConfigError("signals are read from JSONL only, as coserve outcomes writes them")
    return f"{len(read_signal_rows([path]))} rows with signals"


def cmd_check_data(args: argparse.Namespace) -> int:
    from coserve.bench.provenance import write_data
    from coserve.eval.data import load_costs
    from coserve.eval.outcome_check import check_outcomes, fit_check, format_check

    started = time.perf_counter()
    check_outputs(args.json)
    costs = load_costs(args.experts) if args.experts else None
    commands = {
        "train": fit_check(None),
        f"eval (--folds {args.folds})": fit_check(args.folds),
        "bench adapt": _adapt,
        "compare": _compare,
        "train-check, eval --cascade": _cascade,
    }
    reports = [check_outcomes(path, costs, commands, args.thin) for path in args.files]
    for report in reports:
        print(format_check(report, args.thin))
    scored = {r["file"]: set(r["experts"]) for r in reports if "experts" in r}
    unshared: dict[str, list[str]] = {}  # expert -> the files that do not score it
    for expert in sorted(set().union(*scored.values()) if len(scored) > 1 else ()):
        lacking = [name for name, experts in scored.items() if expert not in experts]
        if lacking:  # eval --test and bench adapt --stream need every expert of the file the router is fitted on
            unshared[expert] = lacking
            print(f"{expert!r} is not scored in {', '.join(lacking)}")
    refused = [r for r in reports if r["refused"]]
    if args.json:
        body = {"files": reports, "not_scored_in": unshared, "thin_rows": args.thin, "refused": len(refused)}
        write_data(Path(args.json), body, args.command_line, wall_seconds=time.perf_counter() - started)
    for report in refused:
        print(
            f"coserve: {report['file']}: the commands refuse it: {report['refused'].splitlines()[0]}", file=sys.stderr
        )
    return 2 if refused else 0


def add_check_data_parser(sub: Subcommands) -> None:
    p = sub.add_parser("check-data", help="summarise outcome files and list their bad rows, before train or eval")
    p.add_argument("files", nargs="+", metavar="FILE", help="outcome data (.jsonl or .csv with score:<expert> columns)")
    p.add_argument("--experts", help="experts.json: the experts it lacks or that the files do not score")
    p.add_argument("--folds", type=at_least(2), default=5, help="eval's --folds, for its verdict (default 5)")
    p.add_argument("--thin", type=at_least(1), default=10, help="a (category, expert) cell with fewer rows is thin")
    p.add_argument("--json", help="also write the summaries here")
    p.set_defaults(func=cmd_check_data)
