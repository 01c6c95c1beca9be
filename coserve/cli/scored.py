"""``coserve eval-trained``: one saved router, or two compared prompt by prompt, scored on held-out outcomes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from coserve.cli.common import Subcommands, check_outputs, finite

__all__ = ["add_eval_trained_parser", "cmd_eval_trained"]


def _load_routers(args: argparse.Namespace) -> list[Any]:
    """The ``--router`` folders, refused (before any prompt is read) unless they route to the same experts
    and ``--budget`` is on their one axis."""
    from coserve.errors import ConfigError
    from coserve.eval.scored import check_budget
    from coserve.router.trained import load_trained

    if len(args.router) > 2:
        raise ConfigError(f"--router given {len(args.router)} times; eval-trained scores one router or compares two")
    routers = [load_trained(folder) for folder in args.router]
    if len(routers) == 2:
        a, b = routers
        if sorted(a.experts) != sorted(b.experts):
            raise ConfigError(
                f"--router {args.router[0]} routes to {list(a.experts)}, --router {args.router[1]} to "
                f"{list(b.experts)}: two routers are compared on the same experts"
            )
        if args.budget is not None and a.budget_axis != b.budget_axis:
            raise ConfigError(
                f"--budget {args.budget:g}: the routers' budgets are on different axes ({a.budget_axis}, "
                f"{b.budget_axis}); leave --budget out to route each at its own"
            )
    for router in routers:
        check_budget(router, args.budget)
    return routers


def cmd_eval_trained(args: argparse.Namespace) -> int:
    import time

    from coserve.bench.provenance import write_data
    from coserve.cli.tables import check_csv_dir, trained_tables, write_tables
    from coserve.eval.data import embed_cached, load_outcomes
    from coserve.eval.scored import compare_scored, score_trained, trained_embedder_name
    from coserve.router.embedders import make_embedder

    started = time.perf_counter()
    check_outputs(args.json)
    check_csv_dir(args.csv)
    routers = _load_routers(args)
    tests = [load_outcomes(args.test, experts=router.experts, on_bad=args.on_bad) for router in routers]
    problems = tests[0][1]
    for problem in problems:
        print(f"coserve: skipped {problem}", file=sys.stderr)
    reports = []
    for folder, router, (test, _) in zip(args.router, routers, tests, strict=True):
        name = trained_embedder_name(router)
        X = embed_cached(test.prompts, make_embedder(name))
        one = score_trained(router, test, X, args.budget, args.decisions or len(routers) == 2)
        one["meta"] = {"router_dir": folder, "test": args.test, "n_eval": len(test), "embedder": name,
                       "experts": list(router.experts), "skipped_rows": len(problems)}  # fmt: skip
        reports.append(one)
    if len(reports) == 1:
        report = reports[0]
    else:
        report = {"routers": reports, "difference": compare_scored(*reports)}
        report["meta"] = {"router_dirs": list(args.router), "test": args.test, "n_eval": len(tests[0][0]),
                          "skipped_rows": len(problems), "difference": "B - A (B: the second --router)"}  # fmt: skip
        if not args.decisions:
            for one in reports:
                del one["decisions"]
    write_data(Path(args.json), report, args.command_line, wall_seconds=time.perf_counter() - started)
    _print(report, routers)
    if args.csv:
        written = write_tables(args.csv, trained_tables(report))
        print(f"tables: {', '.join(str(p) for p in written)}")
    print(f"report: {args.json}")
    return 0


def _print(report: dict[str, Any], routers: list[Any]) -> None:
    """The routers' quality and average cost beside each single expert's, their margins, and B - A."""
    scored = report["routers"] if len(routers) == 2 else [report]
    unit = "avg_params_b" if routers[0].budget_axis == "params" else "avg_price"
    labels = [
        f"router {'AB'[i]} ({r.kind})" if len(routers) == 2 else f"router ({r.kind})" for i, r in enumerate(routers)
    ]
    width = max(*map(len, labels), *map(len, routers[0].experts)) + 2
    print(f"{'':<{width}} {'quality':>8} {unit:>12}")
    for label, one in zip(labels, scored, strict=True):
        r = one["router"]
        print(f"{label:<{width}} {r['quality']:>8.3f} {r[unit] if r[unit] is not None else float('nan'):>12.3f}")
    for expert in routers[0].experts:
        b = scored[0]["baselines"][expert]
        print(f"{expert:<{width}} {b['quality']:>8.3f} {b[unit] if b[unit] is not None else float('nan'):>12.3f}")
    for i, one in enumerate(scored):
        who = f"router {'AB'[i]}" if len(routers) == 2 else "router"
        for key in ("best_single", "best_single_affordable"):
            if one[key] is not None:
                low, high = one[key]["interval_95"]
                print(f"{who} - {key.replace('_', ' ')} ({one[key]['expert']}): {one[key]['margin']:+.3f} "
                      f"[{low:+.3f}, {high:+.3f}]")  # fmt: skip
    if "difference" in report:
        d = report["difference"]
        for figure in ("quality", unit):
            low, high = d[figure]["interval_95"]
            print(f"B - A {figure}: {d[figure]['difference']:+.3f} [{low:+.3f}, {high:+.3f}]")
        print(f"chose differently on {d['chose_differently']:.1%} of {d['n']} prompts")


def add_eval_trained_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "eval-trained", help="score a router coserve train saved on held-out outcome data, or compare two"
    )
    p.add_argument(
        "--router",
        required=True,
        action="append",
        help="router directory written by coserve train; twice: compare the two (B - A, B the second)",
    )
    p.add_argument("--test", required=True, help="held-out outcome file scoring every expert the routers route to")
    p.add_argument("--json", required=True, help="write the report here")
    p.add_argument("--csv", help="also write the printed tables as CSV files in this folder")
    p.add_argument("--budget", type=finite, help="route at this budget on the routers' axis (default: each its own)")
    p.add_argument("--decisions", action="store_true", help="also each prompt's id, expert and score in the report")
    p.add_argument("--on-bad", choices=["skip", "refuse"], default="refuse", help="what to do with bad rows")
    p.set_defaults(func=cmd_eval_trained)
