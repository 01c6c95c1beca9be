"""``coserve eval | train``: evaluate routers on outcome data, and fit one to serve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from coserve.cli.common import Subcommands, at_least, check_outputs, check_writable, finite, write_router_dir
from coserve.router.embedders import EMBEDDER_NAMES, STACK_EMBEDDER

__all__ = [
    "add_eval_parser",
    "add_train_parser",
    "cmd_eval",
    "cmd_train",
]


def _routable(
    path: str, on_bad: Any, costs: Any, folds: int | None = None, seed: int = 0, axis: str | None = None
) -> tuple[Any, list[Any]]:
    """``--data``'s outcome set and its problems; refused unless it scores two experts or more, each
    with an entry in ``--experts`` and a cost on ``axis`` (None: either), and has prompts enough for
    ``folds`` (None: for fitting on all of it); all checked before anything is embedded. Experts
    ``--experts`` lists and the data does not score are left out, with a note."""
    from coserve.errors import ConfigError
    from coserve.eval.data import check_foldable, load_outcomes

    outcomes, problems = load_outcomes(path, on_bad=on_bad)
    if len(outcomes.experts) < 2:
        raise ConfigError(f"{path}: scores of {list(outcomes.experts)} only; a router needs two experts or more")
    costs.aligned(outcomes.experts, scored_in=path).budget_axis(axis)
    unscored = [name for name in costs.names if name not in outcomes.experts]
    if unscored:
        print(f"coserve: note: {costs.source} lists {unscored}, which {path} does not score: left out", file=sys.stderr)
    check_foldable(path, outcomes.prompts, folds, seed)
    return outcomes, problems


def _outcomes(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The outcome set, its embeddings and the expert costs named by ``--data``/``--experts``."""
    from coserve.errors import ConfigError
    from coserve.eval.data import embed_cached, load_costs
    from coserve.router.embedders import make_embedder

    costs = load_costs(args.experts)
    axis = "price" if args.budget_price is not None else "params" if args.budget_params is not None else None
    outcomes, problems = _routable(args.data, args.on_bad, costs, seed=args.seed, axis=axis)
    _note_unservable_names(args.data, outcomes)
    categories = sorted(set(outcomes.categories))
    trainable = _trainable(len(categories))
    if args.router not in trainable and args.router in _trainable(2):
        raise ConfigError(
            f"{args.data}: one category ({categories[0]!r}); a {args.router} router classifies prompts into "
            "categories and needs two or more: add categories, or train a per-prompt router (--router prompt-knn)"
        )
    if args.router not in trainable:  # said before anything is embedded
        raise ConfigError(f"--router {args.router}: not a router train fits; one of {', '.join(trainable)}")
    for problem in problems:
        print(f"coserve: skipped {problem}", file=sys.stderr)
    embedder = make_embedder(args.embedder)  # cmd_train fills in the router kind's default
    return outcomes, embed_cached(outcomes.prompts, embedder), costs


def _note_unservable_names(path: str, outcomes: Any) -> None:
    """A note for each expert or category name a library cannot serve (a category travels in a response
    header and metric labels; a library's experts follow the same rule): the router is trained, for
    ``load_trained`` and eval, but a server refuses it until the data names them by the rule."""
    from coserve.config import check_name

    for kind, names in (("expert", outcomes.experts), ("category", sorted(set(outcomes.categories)))):
        for name in names:
            try:
                check_name(name, kind)
            except ValueError as exc:
                print(
                    f"coserve: note: {path}: {exc}; a server refuses this router until it is renamed", file=sys.stderr
                )


def _trainable(n_categories: int) -> list[str]:
    """The router kinds ``coserve train`` fits on data of ``n_categories`` (eval's, less top2, which is
    evaluated only, and map-logistic+fallback, which every trained map router is)."""
    from coserve.eval.harness import available_routers

    return [name for name in available_routers(n_categories)[0] if "+" not in name and not name.startswith("top")]


def default_embedder(router: str | None) -> str:
    """The embedder a router kind is trained and evaluated with unless ``--embedder`` says otherwise:
    the stack router reads the prompt features beside the static vector; the others, MiniLM's unit
    vectors (their kNN and OOD parts compare unit vectors)."""
    return STACK_EMBEDDER if router in (None, "stack") else "minilm"


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from coserve.bench.provenance import write_data
    from coserve.cli.tables import check_csv_dir, eval_tables, summary_lines, write_tables
    from coserve.eval.data import load_costs, load_outcomes
    from coserve.eval.harness import NO_VECTORS, available_routers, evaluate, evaluate_grouped
    from coserve.eval.intervals import check_reference
    from coserve.eval.user_router import reads_text
    from coserve.router.embedders import make_embedder

    started = time.perf_counter()
    check_outputs(args.json, args.plot)
    check_csv_dir(args.csv)
    costs = load_costs(args.experts)
    train, problems = _routable(args.data, args.on_bad, costs, None if args.test else args.folds, args.seed)
    signals = _cascade_input(args)  # a bad --cascade is refused now, not after the routers' evaluation
    test = None
    if args.test:
        test, more = load_outcomes(args.test, experts=train.experts, on_bad=args.on_bad)
        problems += more
        if unseen := sorted(set(test.categories) - set(train.categories)):  # no classifier can name them
            print(
                f"coserve: note: {args.test}: categories {unseen} are not in {args.data}: "
                "category_accuracy counts their prompts as misses",
                file=sys.stderr,
            )
    for problem in problems:
        print(f"coserve: skipped {problem}", file=sys.stderr)
    routers, users = _router_names(args.routers, len(set(train.categories)))
    names = routers if routers is not None else available_routers(len(set(train.categories)))[0]
    check_reference(args.reference, names, not args.no_intervals, "--reference")
    options = {"folds": args.folds, "seed": args.seed, "jobs": args.jobs, "user_routers": users,
               "intervals": not args.no_intervals, "reference": args.reference}  # fmt: skip
    if args.embedder and not all(reads_text(users, name) for name in names):  # else nothing is embedded
        report = evaluate(train, test, costs, routers=routers, embedder=make_embedder(args.embedder), **options)
    else:  # each router on the vectors `coserve train` fits it on: what it would deploy
        by_embedder: dict[str, list[str]] = {}
        for name in names:  # a class that reads the prompts' texts needs no vectors: none are made for it
            by_embedder.setdefault(NO_VECTORS if reads_text(users, name) else default_embedder(name), []).append(name)
        groups = {e: (None if e == NO_VECTORS else make_embedder(e), rs) for e, rs in by_embedder.items()}
        report = evaluate_grouped(train, test, costs, groups, **options)
    report["meta"].update(data=str(args.data), test=args.test, skipped_rows=len(problems))
    cascade = _cascade(args, *signals) if signals is not None else None
    if cascade is not None:
        report["cascade"] = cascade
    # with its provenance (command, commit, CPU, wall time)
    write_data(Path(args.json), report, args.command_line, wall_seconds=time.perf_counter() - started)
    if args.plot:
        from coserve.eval.plot import plot_report

        plot_report(report, args.plot, title=Path(args.data).parent.name + "/" + Path(args.data).name)
    base = report["baselines"]
    print(f"{'baseline':<40} {'quality':>8} {'params_b':>9} {'price':>7}")
    for name, b in base.items():
        print(f"{name:<40} {b['quality']:>8.3f} {b['avg_params_b'] or float('nan'):>9.2f} {b['avg_price'] or 0:>7.3f}")
    print(f"{'router':<26} {'auc':>6} {'q@best':>7} {'min_budget':>10} {'gap_closed':>10}  margin@best [95%]")
    for name, entry in report["routers"].items():
        m = entry["metrics"]
        auc = m.get("auc_" + m["cost_axis"])
        print(
            f"{name:<26} {_fmt(auc):>6} {_fmt(m['quality_at_best_single_budget']):>7} "
            f"{_fmt(m['min_budget_for_best_single_quality']):>10} {_fmt(m['oracle_gap_closed']):>10}  "
            + _margin(m.get("margin_at_best_single_budget"))
            + (f"  apgr {_fmt(m['apgr'])}" if "apgr" in m else "")
        )
    print("\n".join(summary_lines(report)))
    if args.csv:
        print(f"tables: {', '.join(str(p) for p in write_tables(args.csv, eval_tables(report)))}")
    print(f"report: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


def _router_names(text: str | None, n_categories: int) -> tuple[list[str] | None, dict[str, str]]:
    """``--routers``' names (None: every one) and the user's routers among them, refused before anything is embedded."""
    from coserve.eval.harness import available_routers
    from coserve.eval.user_router import parse_routers

    available, missing = available_routers(n_categories)
    return parse_routers(text, available, available_routers(2)[0], missing)


def _cascade_input(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Any] | None:
    """The rows of ``--data`` that record signals and the ``--cascade`` library (None: cheapest first);
    None when no row has signals and no library was named."""
    from coserve.cli.common import load_served_library
    from coserve.errors import ConfigError
    from coserve.eval.cascade import read_signal_rows

    try:
        rows = read_signal_rows([args.data])
    except ConfigError:
        if args.cascade:
            raise
        return None  # outcome data without signals (the shared sets): no cascade points
    return rows, load_served_library(args.cascade) if args.cascade else None


def _cascade(args: argparse.Namespace, rows: list[dict[str, Any]], library: Any) -> dict[str, Any] | None:
    """Cascade points on the rows that record signals (coserve outcomes): the ladder of ``--cascade
    LIBRARY``, else every expert cheapest first. None without every expert's parameters."""
    from coserve.cli.cascade import format_points
    from coserve.eval.cascade import cascade_points, oracle_point
    from coserve.eval.data import load_costs

    costs = load_costs(args.experts)
    params = {name: float(p) for name, p in zip(costs.names, costs.params_b, strict=True)}
    if library is None and any(p != p for p in params.values()):
        return None  # a cascade climbs parameters: not without every expert's
    points = cascade_points(rows, library, args.folds, args.seed, params_b=params)
    oracle = oracle_point(rows, library, 3, params_b=params)  # a perfect check: the most a check could give
    ladder = args.cascade or "every expert, cheapest first"
    print(f"cascade ({ladder}; check out of fold, {args.folds} grouped folds, AUC {points['cv']['auc']}):")
    print(format_points(points["points"]))
    best = oracle["cascade"]
    print(f"a perfect check: quality {best['quality']:.3f} at {best['avg_params_b']:.3f} B")
    result = {"ladder": ladder, **points, "oracle": oracle}
    gated = _gated(rows, library, args) if library is not None else None
    if gated is not None:
        result["gated"] = gated
    return result


def _gated(rows: list[dict[str, Any]], library: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """Cascade points with the library's start gate (``routing.cascade.start_gate``), the gate refitted
    out of fold on the rows' prompts; None when the library has no gate or a row has no prompt."""
    from coserve.cli.cascade import format_points
    from coserve.engine.cascade import Cascade
    from coserve.eval.cascade_gate import gated_points

    cascade = Cascade.from_library(library)
    if cascade is None or cascade.gate is None:
        return None
    unprompted = sum(not row.get("prompt") for row in rows)
    if unprompted:
        print(f"coserve: no gated cascade points: {unprompted} of {len(rows)} rows have no prompt", file=sys.stderr)
        return None
    limit = cascade.settings.start_gate_threshold
    gated = gated_points(rows, library, cascade.gate.expert, limit, args.folds, args.seed, good=cascade.gate.good)
    print(f"with the start gate ({cascade.gate.expert}; gate out of fold, AUC {gated['gate_cv']['auc']}):")
    print(format_points(gated["points"]))
    return gated


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _margin(entry: dict[str, Any] | None) -> str:
    """A margin and its interval, ``+0.012 [-0.004, +0.027]``; ``-`` where there is none."""
    if entry is None or entry["margin"] is None:
        return f"{'-':<24}"
    low, high = (f"{x:+.3f}" if x is not None else "-" for x in entry["interval_95"])
    return f"{entry['margin']:+.3f} [{low}, {high}]"


def _save_prior_fit(router: Any, outcomes: Any, X: Any, costs: Any, out: str, data: str) -> None:
    """Beside the router, the out-of-fold predictions of its own kind that a server's change detector is
    calibrated from (router.online.change_calibration; docs/adapt.md); skipped, with a note, where the
    rows do not allow it (one category: no online router; fewer distinct prompts than folds)."""
    import numpy as np

    from coserve.bench.adapt import CALIBRATION_FOLDS
    from coserve.bench.adapt_fit import FOLDS_SEED, cross_fit
    from coserve.errors import ConfigError
    from coserve.eval.data import check_foldable
    from coserve.router.online_calibration import save_prior_fit

    if router.classifier is None:
        return
    try:
        check_foldable(data, outcomes.prompts, CALIBRATION_FOLDS, FOLDS_SEED, "give more rows")  # names the file
        fit = cross_fit(outcomes, X, costs, router.budget_axis, router.classes, router.experts, CALIBRATION_FOLDS,
                        router.kind)  # fmt: skip
    except (ConfigError, ValueError, np.linalg.LinAlgError) as exc:  # an optional file: training still succeeds
        print(f"coserve: no calibration file for router.online's change detector: {exc}", file=sys.stderr)
        return
    save_prior_fit(out, fit, router.classes, router.experts)


def _check_router_out(out: Path) -> None:
    """Refuse an ``--out`` that is not a new folder nor a trained router's, before any work: training
    replaces the whole folder."""
    from coserve.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        why = "a folder that holds no trained router (no manifest.json); name a new folder or a router's"
        raise ConfigError(f"--out {out}: {why}")
    check_writable("--out", out)


def cmd_train(args: argparse.Namespace) -> int:
    from coserve.eval.train import train_router

    out = Path(args.out).resolve()  # a link to a router: the router it names is replaced, the link kept
    _check_router_out(out)
    args.embedder = args.embedder or default_embedder(args.router)
    outcomes, X, costs = _outcomes(args)
    axis, budget = ("price", args.budget_price) if args.budget_price is not None else ("params", args.budget_params)
    router = train_router(
        outcomes,
        X,
        costs,
        kind=args.router,
        budget_axis=axis if budget is not None else None,
        budget=budget,
        seed=args.seed,
    )
    router.hyper["embedder"] = args.embedder

    def write(folder: Path) -> None:
        router.save(folder)
        _save_prior_fit(router, outcomes, X, costs, str(folder), args.data)

    write_router_dir(out, write)
    mapping = {c: router.experts[e] for c, e in zip(router.classes, router.assignment, strict=True)}
    print(f"coserve: trained {router.kind} on {len(outcomes)} prompts -> {args.out}")
    print(f"budget: {router.budget:g} ({router.budget_axis}); fallback: {router.fallback_expert}")
    for category, expert in mapping.items():
        print(f"  {category:<24} -> {expert}")
    return 0


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The outcome data a router is fitted on or evaluated with."""
    p.add_argument("--data", required=True, help="outcome data (.jsonl or .csv with score:<expert> columns)")
    p.add_argument("--experts", required=True, help="experts.json with params_b and prices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-bad", choices=["skip", "refuse"], default="refuse", help="what to do with bad rows")
    p.add_argument(
        "--embedder",
        help=f"one of {', '.join(EMBEDDER_NAMES)}, options after ':' (minilm+features:max_tokens=128); "
        f"default: {STACK_EMBEDDER} for the stack router (train's default), minilm for the others "
        "(eval scores each router on its own; given, every router reads this one)",
    )


def add_eval_parser(sub: Subcommands) -> None:
    p = sub.add_parser("eval", help="evaluate routers on outcome data: quality vs cost against baselines")
    add_data_args(p)
    split = p.add_mutually_exclusive_group()
    split.add_argument("--folds", type=at_least(2), default=5, help="prompt-grouped cross-validation folds")
    split.add_argument("--test", help="held-out outcome file: fit on --data, score on this")
    p.add_argument("--json", required=True, help="write the report here")
    p.add_argument("--plot", help="write the Pareto plot (PNG) here")
    p.add_argument("--routers", help="comma-separated router names (default: every available one), or module:Class")
    p.add_argument("--jobs", type=at_least(1), default=1, help="folds evaluated in parallel processes")
    p.add_argument("--cascade", help="rows with signals: replay this library's cascade (default: cheapest first)")
    p.add_argument("--csv", help="also write the printed tables as CSV files in this folder")
    p.add_argument("--no-intervals", action="store_true", help="leave out the bootstrap intervals over prompts")
    p.add_argument("--reference", help="router the others' summary figures are compared to (default: best AUC)")
    p.set_defaults(func=cmd_eval)


def add_train_parser(sub: Subcommands) -> None:
    p = sub.add_parser("train", help="fit a router on outcome data and save it as a directory")
    add_data_args(p)
    p.add_argument("--out", required=True, help="router directory to write")
    p.add_argument(
        "--router",
        default="stack",
        help="stack (default), map-<classifier>, prompt-<predictor> or hybrid (top2: eval only)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-params", type=finite, help="average active parameters (billions) per request")
    budget.add_argument("--budget-price", type=finite, help="average price (USD per million tokens) per request")
    p.set_defaults(func=cmd_train)
