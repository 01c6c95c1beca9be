"""``coserve outcomes | compare | map``: measure the experts on benchmark suites, and what follows
from the measurements (routed against single experts; the budget-optimal maps)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from coserve.cli.common import (
    Subcommands,
    add_library_arg,
    at_least,
    check_outputs,
    finite,
    load_engine,
    load_served_library,
)

__all__ = ["add_compare_parser", "add_map_parser", "add_outcomes_parser", "cmd_compare", "cmd_map", "cmd_outcomes"]


def cmd_outcomes(args: argparse.Namespace) -> int:
    from coserve.errors import ConfigError
    from coserve.outcomes.runner import done_ids, run_outcomes
    from coserve.outcomes.suites import make_suite

    names = [n.strip() for n in args.suite.split(",") if n.strip()]
    exclude: set[str] = set()
    for path in args.exclude or []:
        if not Path(path).is_file():  # a mistyped held-out file would let its items in again, silently
            raise ConfigError(f"--exclude {path}: no such outcome file")
        try:
            exclude |= done_ids(Path(path), repair=False)  # another run may still be writing it
        except ConfigError as exc:
            raise ConfigError(f"--exclude {exc.message}") from None
    work = [
        (suite, item) for suite in map(make_suite, names) for item in suite.load(args.limit, args.seed, exclude=exclude)
    ]
    engine = load_engine(args.library)

    async def run() -> Any:
        try:
            return await run_outcomes(
                engine,
                work,
                args.out,
                max_tokens=args.max_tokens,
                concurrency=args.concurrency,
                with_prompts=args.with_prompts,
                judge=args.judge,
                routed=args.routed,
                keep_text=args.keep_text,
                run_examples=args.run_examples or _library_runs_examples(engine.library),
            )
        finally:
            await engine.close()

    summary = asyncio.run(run())
    print(summary.table([*engine.library.expert_names, *(["routed"] if args.routed else [])]))
    return 0


def _library_runs_examples(library: Any) -> bool:
    """The library's cascade runs answers on the prompt's examples: then its outcome rows do too."""
    cascade = library.routing.cascade
    return library.routing.mode == "cascade" and cascade is not None and cascade.run_examples


def cmd_compare(args: argparse.Namespace) -> int:
    from coserve.outcomes.compare import compare_routed, format_comparison

    check_outputs(args.json)
    library = load_served_library(args.library)
    single = load_served_library(args.single) if args.single else None
    result = compare_routed(args.data, {e.name: e.params_b for e in library.experts}, single)
    print(format_comparison(result))
    if library.routing.mode == "cascade":
        result["replay"] = _replay(args.data, library)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _replay(data: str, library: Any) -> dict[str, Any]:
    """A cascade library's cascade replayed at a range of thresholds on the file's rows with signals."""
    from coserve.cli.cascade import format_points
    from coserve.engine.cascade import Cascade
    from coserve.eval.cascade import check_points, read_signal_rows

    cascade = Cascade.from_library(library)
    assert cascade is not None
    points = check_points(read_signal_rows([data]), library, cascade.check, cascade.settings.max_steps)
    print(f"the cascade replayed on the recorded answers (check {cascade.settings.check}):")
    print(format_points(points))
    return {"check": cascade.settings.check, "points": points}


def cmd_map(args: argparse.Namespace) -> int:
    """The measured per-category table of a library whose map is solved from outcomes, its maps at
    budgets, each single expert, and the quality/cost front (``--plot``)."""
    from coserve.router.measured import measure_maps

    check_outputs(args.json, args.plot)
    library = load_served_library(args.library)
    measured = measure_maps(library, args.budget or [])
    table, unit = measured.table, measured.unit
    print(f"measured on {library.router.outcomes} (mean score; n = rows per category)")
    print(table.format())
    weights = zip(table.categories, measured.weights, strict=True)
    print("category weights: " + ", ".join(f"{c} {w:.2f}" for c, w in weights))
    for entry in measured.maps:
        label = "unconstrained" if entry["budget"] is None else f"budget {entry['budget']:g} {unit}"
        print(f"\nmap at {label}: expected quality {entry['quality']:.3f}, average cost {entry['avg_cost']:.3f} {unit}")
        for category, expert in entry["map"].items():
            print(f"  {category:<12} -> {expert}")
    print("\nsingle experts (everything to one):")
    for name, (avg_cost, quality) in measured.singles.items():
        print(f"  {name:<12} quality {quality:.3f}, cost {avg_cost:.3f} {unit}")
    result = measured.as_dict()
    if args.plot:
        from coserve.eval.plot import plot_map_frontier

        chosen = {
            f"map @ {m['budget']:g}" if m["budget"] is not None else "best map": (m["avg_cost"], m["quality"])
            for m in measured.maps
        }
        frontier = [(m.avg_cost, m.quality) for m in measured.front]
        xlabel = f"average cost per request ({unit}, category weights as above)"
        title = f"{library.path.name if library.path else 'library'}: measured maps"
        plot_map_frontier(frontier, measured.singles, chosen, args.plot, xlabel, title=title)
        print(f"\nplot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


def add_map_parser(sub: Subcommands) -> None:
    p = sub.add_parser("map", help="a library's measured per-category table, its maps at budgets, and the front")
    add_library_arg(p)
    p.add_argument("--budget", type=finite, action="append", help="also solve at this budget (repeatable)")
    p.add_argument("--plot", help="write the quality/cost front as a PNG here")
    p.add_argument("--json", help="write the table, maps and front as JSON here")
    p.set_defaults(func=cmd_map)


def add_outcomes_parser(sub: Subcommands) -> None:
    p = sub.add_parser("outcomes", help="run every expert on benchmark suites and write outcome data (JSONL)")
    add_library_arg(p)
    p.add_argument("--suite", required=True, help="comma-separated suites: mmlu, gsm8k, humaneval, leetcode, mtbench")
    p.add_argument("--limit", type=int, help="a seeded sample of this many items per suite, spread over topics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL to append to; ids already in it are skipped (resume)")
    p.add_argument(
        "--max-tokens",
        type=at_least(1),
        help="answer cap in tokens (default per suite: mmlu 16, gsm8k 256, humaneval/leetcode/mtbench 384)",
    )
    p.add_argument("--judge", help="the library's expert that rates answers of judged suites (mtbench)")
    p.add_argument("--routed", action="store_true", help="also ask the library's router (column 'routed')")
    p.add_argument("--exclude", action="append", help="skip item ids found in this outcome file (a held-out sample)")
    p.add_argument("--concurrency", type=at_least(1), default=2, help="items in flight at once")
    p.add_argument("--with-prompts", action="store_true", help="also store each prompt (for local training)")
    p.add_argument(
        "--keep-text", action="store_true", help="also store each answer's text ('texts'; verifiers can be replayed)"
    )
    p.add_argument(
        "--run-examples",
        action="store_true",
        help="run each answer's code on the prompt's own examples (sandboxed; on when the library's "
        "routing.cascade.run_examples is): the examples_passed signal",
    )
    p.set_defaults(func=cmd_outcomes)


def add_compare_parser(sub: Subcommands) -> None:
    p = sub.add_parser("compare", help="routed vs each single expert, from an outcome file written with --routed")
    add_library_arg(p)
    p.add_argument("--data", required=True, help="JSONL from coserve outcomes --routed")
    p.add_argument("--json", help="also write the comparison here")
    p.add_argument("--single", help="add a column: this library's single-choice routing, from the recorded router")
    p.set_defaults(func=cmd_compare)
