"""``coserve train-check``: fit a cascade's answer check on outcome files that record signals, judge it
by grouped cross-validation and, given a library, replay its cascade at a range of thresholds; with
``--gate``, fit the cascade's start gate on the rows' prompts too (coserve.router.gate)."""

from __future__ import annotations

import argparse
from typing import Any

from coserve.cli.common import Subcommands, add_library_arg, at_least, load_served_library, share

__all__ = ["add_train_check_parser", "cmd_train_check", "format_points"]


def cmd_train_check(args: argparse.Namespace) -> int:
    from coserve.errors import ConfigError
    from coserve.eval.cascade import cascade_points, oracle_point, read_signal_rows, train_check
    from coserve.router.check import FEATURES

    if args.gate and not args.gate_expert:
        raise ConfigError("--gate needs --gate-expert: the expert the cascade starts from (e.g. coder)")
    if not args.gate and (args.gate_expert or args.suite_prompts):
        raise ConfigError("--gate-expert and --suite-prompts are for the start gate: give --gate FILE too")
    rows = read_signal_rows(args.data)
    experts = sorted({e for row in rows for e in row["signals"]})
    if args.gate and args.gate_expert not in experts:
        known = ", ".join(experts)
        raise ConfigError(f"--gate-expert {args.gate_expert!r}: no answers of it in the data (experts: {known})")
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else FEATURES
    check, figures, _, _ = train_check(rows, experts, args.folds, args.seed, args.good, features)
    extra: dict[str, Any] = {"cv": figures, "data": [str(p) for p in args.data]}
    print(
        f"coserve: check on {figures['answers']} answers of {figures['items']} items ({args.folds} grouped folds): "
        f"AUC {figures['auc']}, Brier {figures['brier']} (base rate {figures['brier_base_rate']}), ECE {figures['ece']}"
    )
    if args.library:
        library = load_served_library(args.library)
        points = cascade_points(rows, library, args.folds, args.seed, args.max_steps, args.good, features=features)
        oracle = oracle_point(rows, library, args.max_steps, good=args.good)
        extra["replay"] = {"library": args.library, "out_of_fold": True, "points": points["points"], "oracle": oracle}
        print(format_points(points["points"]))
        o = oracle["cascade"]
        print(f"{'oracle':>9} {o['quality']:>10.3f} {o['avg_params_b']:>9.3f}  (a perfect check) {oracle['steps']}")
    check.save(args.out, **extra)
    print(f"check: {args.out}")
    if args.gate:
        train_gate(args, rows)
    return 0


def train_gate(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """``--gate``: the start gate of ``--gate-expert`` fitted on the rows' prompts, its grouped-CV
    figures, and with ``--library`` the cascade replayed with it (check and gate out of fold)."""
    from coserve.eval.cascade_gate import fit_gate, gated_points
    from coserve.outcomes.prompts import with_prompts

    if args.suite_prompts:
        rows = with_prompts(rows)  # in memory only: nothing is written back
    gate, figures = fit_gate(rows, args.gate_expert, args.folds, args.seed, args.good)
    extra: dict[str, Any] = {"cv": figures, "data": [str(p) for p in args.data]}
    print(
        f"coserve: start gate for {args.gate_expert} on {figures['items']} prompts ({args.folds} grouped folds): "
        f"AUC {figures['auc']}, Brier {figures['brier']} (base rate {figures['brier_base_rate']})"
    )
    if args.library:
        library = load_served_library(args.library)
        gated = gated_points(rows, library, args.gate_expert, None, args.folds, args.seed, args.max_steps, args.good)
        extra["replay"] = {"library": args.library, "out_of_fold": True, **gated}
        print("with the start gate (break-even limit):")
        print(format_points(gated["points"]))
    gate.save(args.gate, **extra)
    print(f"start gate: {args.gate}")


def format_points(points: list[dict[str, Any]]) -> str:
    """A table of replayed cascade points (threshold, quality, params) beside the single choice."""
    lines = [f"{'threshold':>9} {'cascade q':>10} {'params B':>9} {'single q':>9} {'params B':>9}  steps"]
    for point in points:
        c, s = point["cascade"], point["single"]
        lines.append(
            f"{point['threshold']:>9.2f} {c['quality']:>10.3f} {c['avg_params_b']:>9.3f} "
            f"{s['quality']:>9.3f} {s['avg_params_b']:>9.3f}  {point['steps']}"
        )
    return "\n".join(lines)


def add_train_check_parser(sub: Subcommands) -> None:
    p = sub.add_parser("train-check", help="fit a cascade's answer check on outcome files with signals")
    p.add_argument("--data", required=True, action="append", help="JSONL from coserve outcomes (repeatable)")
    p.add_argument("--out", required=True, help="the check file to write (JSON)")
    p.add_argument("--folds", type=at_least(2), default=5, help="item-grouped cross-validation folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--good", type=share, default=0.5, help="a score at or above this is a good answer")
    p.add_argument(
        "--features",
        help="comma-separated signals the check reads (default: all; the five log-probability, length, "
        "finish and confidence ones: mean_logprob,min_logprob,log1p_tokens,finish_length,confidence)",
    )
    p.add_argument("--gate", help="also fit a start gate on the rows' prompts and write it here (JSON)")
    p.add_argument("--gate-expert", help="with --gate: the expert whose answers it predicts (the cascade's start)")
    p.add_argument(
        "--suite-prompts", action="store_true", help="with --gate: rebuild rows' missing prompts from their suites"
    )
    add_library_arg(p)
    p.add_argument("--max-steps", type=at_least(1), default=3, help="replay: experts asked at most per request")
    p.set_defaults(func=cmd_train_check)
