"""``coserve bench experts | route | serve | cluster | adapt``: the benchmarks, each writing its figures as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from coserve.bench.provenance import write_data
from coserve.cli.common import Subcommands, add_library_arg, at_least, check_outputs, load_served_library
from coserve.router.embedders import EMBEDDER_NAMES, STACK_EMBEDDER

__all__ = [
    "add_bench_parser",
    "cmd_bench_adapt",
    "cmd_bench_cluster",
    "cmd_bench_experts",
    "cmd_bench_route",
    "cmd_bench_serve",
]


def cmd_bench_experts(args: argparse.Namespace) -> int:
    from coserve.bench.experts import bench_experts

    result = bench_experts(load_served_library(args.library), tokens=args.tokens, repeats=args.repeats)
    if args.json:
        write_data(Path(args.json), result, args.command_line)
    return 0


def cmd_bench_route(args: argparse.Namespace) -> int:
    from coserve.bench.route import bench_route

    embedders = [e.strip() for e in args.embedders.split(";") if e.strip()] if args.embedders else []
    blas = None if args.blas_threads == 0 else args.blas_threads
    result = bench_route(load_served_library(args.library), n=args.n, embedders=embedders, blas_threads=blas)
    if args.json:
        write_data(Path(args.json), result, args.command_line)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from coserve.bench.serve import run

    return run(load_served_library(args.library), args)


def cmd_bench_cluster(args: argparse.Namespace) -> int:
    from coserve.bench.cluster import ClusterBenchOptions, bench_cluster
    from coserve.distributed.ray_app import require_ray

    require_ray()
    options = ClusterBenchOptions(nodes=args.nodes, runs=args.runs, requests=args.requests, rate=args.rate,
                                  max_tokens=args.max_tokens, seed=args.seed, timeout_s=args.timeout,
                                  fault=not args.no_fault, cold_load_weight=args.cold_load_weight,
                                  ceiling=args.ceiling, note=args.note)  # fmt: skip
    result = bench_cluster(load_served_library(args.library), options)
    write_data(Path(args.json), result, args.command_line)
    return 0


def cmd_bench_adapt(args: argparse.Namespace) -> int:
    from coserve.bench.kernel import pin_blas_kernel

    pin_blas_kernel()  # before numpy loads: the figures must not depend on the CPU's BLAS kernel
    from coserve.bench.adapt import AdaptOptions, run_adapt
    from coserve.router.embedders import make_embedder

    axis, target = ("price", args.budget_price) if args.budget_price is not None else ("params", args.budget_params)
    knobs: tuple[str, ...] = ("requests", "phases", "feedback", "noise", "shock", "seed", "prior_strength")
    knobs += ("max_count", "step", "change_threshold", "change_drift", "reset_count", "mix_window")
    knobs += ("granularity", "prompt_weight", "change_baseline", "change_min_feedback")
    knobs += ("expert_rate", "mix_jump", "mix_short", "refresh_on_alarm", "underspend_debt", "fine_weight")
    knobs += ("change_upward", "explore_at_zero", "weight_floor", "alarm_explore", "change_shift_share")
    knobs += ("change_model", "change_variance_floor", "change_reference", "change_reference_memory")
    knobs += ("change_calibration", "change_calibration_shrink", "change_anchor", "change_fast_drift")
    knobs += ("change_fast_threshold", "change_probe", "change_probe_requests", "change_probe_margin")
    knobs += ("change_probe_starved", "change_confirm", "change_confirm_requests", "change_confirm_sd")
    knobs += ("change_confirm_error", "explore_policy", "kg_horizon", "kg_settle", "alarm_revert")
    knobs += ("alarm_revert_share", "alarm_explore_underspend", "change_shift_pool", "shadow", "shadow_charged")
    knobs += ("shadow_detected",)
    given = {name: getattr(args, name) for name in (*knobs, "explore_cap") if getattr(args, name) is not None}
    options = AdaptOptions(budget_axis=axis, target=target, **given)  # unset knobs keep AdaptOptions' defaults
    check_outputs(args.json, args.plot)
    predictor = make_embedder(args.predictor_embedder)
    report = run_adapt(
        args.prior, args.stream, args.experts, options, make_embedder(args.embedder), predictor, args.on_bad
    )
    write_data(Path(args.json), report, args.command_line)
    if args.plot:
        from coserve.bench.adapt import plot_adapt

        plot_adapt(report, args.plot)
    q = report["quality"]
    print(f"target {target:g} ({axis}); realised {report['realised_avg_cost']:.3f}")
    tracking = report["tracking_error_max"]
    tracking_text = "-" if tracking is None else f"{tracking:.4f}"  # None: no window starts after request 1,000
    kept = " (the best fixed map after the shock keeps the shocked expert above the criterion's 10%)"
    kept = kept if report["shock"]["best_map_keeps_it"] else ""
    print(f"tracking_error_max {tracking_text}; recovery_requests {report['recovery_requests']}{kept}")
    print(f"quality adaptive {q['adaptive']:.4f}  static {q['static']:.4f}  hindsight {q['hindsight']:.4f}")
    if options.shadow > 0:  # a run with shadows is not the benchmark: said where its figures are read
        paid = "paid from the target" if options.shadow_charged else "not charged"
        print(
            f"shadows on {report['shadow_share']:.1%} of requests, {report['shadow_cost_share']:.1%} of the compute "
            f"({paid}): not the issue's benchmark"
        )
    return 0


def _add_adapt_parser(bench: Any) -> None:
    b = bench.add_parser(
        "adapt",
        help="replay outcome data as drifting traffic through the online router",
        epilog="Unset knobs take the defaults of coserve.bench.adapt.AdaptOptions (docs/adapt.md).",
    )
    b.add_argument("--prior", required=True, help="outcome file the router is fitted on")
    b.add_argument("--stream", help="outcome file replayed as traffic (default: the other half of --prior)")
    b.add_argument("--experts", required=True, help="experts.json with params_b and prices")
    budget = b.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-params", type=float, help="target average active parameters (billions)")
    budget.add_argument("--budget-price", type=float, help="target average price (USD per million tokens)")
    b.add_argument("--json", required=True, help="write the report here")
    b.add_argument("--plot", help="also draw cost and quality per window to this PNG")
    b.add_argument("--requests", type=int)
    b.add_argument("--phases", type=int, help="phases of the drifting category mix (default 4; the issue asks >= 3)")
    b.add_argument("--feedback", type=float, help="share of requests whose score is fed back")
    b.add_argument(
        "--shadow",
        type=float,
        help="share of requests also answered and judged in the shadow by a second expert, its cost in the budget "
        "(default 0, at most 0.2); it changes the benchmark's information: not the issue's benchmark",
    )
    b.add_argument(
        "--shadow-charged", action=argparse.BooleanOptionalAction, help="a shadow's cost is paid from the budget"
    )
    b.add_argument(
        "--shadow-detected", action=argparse.BooleanOptionalAction, help="a shadow's score reaches the change detector"
    )
    b.add_argument("--noise", type=float, help="sd of the noise on a fed-back score")
    b.add_argument("--shock", type=float, help="halfway drop of the busiest static expert's scores")
    b.add_argument("--prior-strength", type=float, help="pseudo-counts of the offline scores")
    b.add_argument("--max-count", type=float, help="cap on a score's pseudo-counts (forgetting)")
    b.add_argument("--step", type=float, help="the budget controller's step")
    b.add_argument("--explore-cap", type=float, help="most share of traffic that explores")
    b.add_argument("--change-threshold", type=float, help="the change detector's alarm level (0: none)")
    b.add_argument("--change-drift", type=float, help="half the smallest shift the detector looks for")
    b.add_argument("--change-baseline", choices=["posterior", "feedback"], help="the detector's residuals against")
    b.add_argument("--change-min-feedback", type=int, help="feedback baseline: scores a cell needs to be tested")
    b.add_argument("--reset-count", type=float, help="pseudo-counts a changed expert's scores keep")
    b.add_argument("--mix-window", type=int, help="requests whose mix sets the feed-forward weight (0: none)")
    b.add_argument("--granularity", choices=["category", "prompt"], help="route per category or per prompt")
    b.add_argument("--prompt-weight", type=float, help="share of a prompt's predicted offset kept (prompt mode)")
    b.add_argument("--expert-rate", type=float, help="learning rate of a per-expert offset (0: none)")
    b.add_argument("--mix-jump", type=float, help="mix distance that hands the feed-forward to the short window")
    b.add_argument("--mix-short", type=int, help="requests the feed-forward weight reads after a mix jump")
    b.add_argument(
        "--refresh-on-alarm", action=argparse.BooleanOptionalAction, help="re-solve the feed-forward at an alarm"
    )
    b.add_argument("--underspend-debt", type=float, help="underspend at weight 0 carried and paid back (requests)")
    b.add_argument("--fine-weight", type=float, help="below this cost weight the controller's step shrinks")
    b.add_argument("--change-upward", action=argparse.BooleanOptionalAction, help="an alarm of a rise rebases too")
    b.add_argument("--explore-at-zero", action=argparse.BooleanOptionalAction, help="explore where the weight is 0")
    b.add_argument("--weight-floor", type=float, help="the cost weight may fall to minus this (two-sided target)")
    b.add_argument("--alarm-explore", type=int, help="requests after a downward alarm its expert may be explored")
    b.add_argument("--change-shift-share", type=float, help="share of the estimated shift an alarm moves means by")
    b.add_argument(
        "--change-model", choices=["flat", "proportional"], help="residuals alike, or weighed by the expected score"
    )
    b.add_argument("--change-variance-floor", type=float, help="proportional: > 0 divides by the score's variance")
    b.add_argument(
        "--change-reference", choices=["zero", "running"], help="residuals as they are, or less a running mean"
    )
    b.add_argument("--change-reference-memory", type=float, help="running: the reference's memory, in feedbacks")
    b.add_argument(
        "--change-calibration", choices=["none", "cell", "fading"], help="residuals less each cell's prior bias"
    )
    b.add_argument("--change-calibration-shrink", type=float, help="the cell offsets' pseudo-counts")
    b.add_argument(
        "--change-anchor", action=argparse.BooleanOptionalAction, help="residuals against the climb's start estimate"
    )
    b.add_argument("--change-fast-drift", type=float, help="the second, down-only CUSUM's drift")
    b.add_argument("--change-fast-threshold", type=float, help="the second, down-only CUSUM's level (0: none)")
    b.add_argument("--change-probe", type=float, help="share of the alarm level above which an expert is probed")
    b.add_argument("--change-probe-requests", type=int, help="requests one suspicion episode may probe")
    b.add_argument("--change-probe-margin", type=float, help="objective margin within which a request is probed")
    b.add_argument("--change-probe-starved", type=float, help="probe only below this short/long traffic share ratio")
    b.add_argument(
        "--change-confirm", action=argparse.BooleanOptionalAction, help="a downward alarm re-tested before it sticks"
    )
    b.add_argument("--change-confirm-requests", type=int, help="requests one confirmation may route to the expert")
    b.add_argument("--change-confirm-sd", type=float, help="the confirmation test's residual sd")
    b.add_argument("--change-confirm-error", type=float, help="the confirmation test's error rates (both)")
    b.add_argument(
        "--explore-policy", choices=["thompson", "kg"], help="an exploration under the cap: a draw, or kg (value)"
    )
    b.add_argument("--kg-horizon", type=float, help="kg: the requests one more observation's knowledge serves")
    b.add_argument("--kg-settle", type=int, help="kg: requests after a downward alarm its expert earns no bonus")
    b.add_argument("--alarm-revert", type=int, help="requests a downward move may starve its expert ere half goes back")
    b.add_argument("--alarm-revert-share", type=float, help="alarm_revert: the share of the move taken back")
    b.add_argument("--change-shift-pool", type=float, help="a drop's move per category, shrunk with this many counts")
    b.add_argument(
        "--alarm-explore-underspend", type=float, help="alarm_explore only while the window is this share under target"
    )
    b.add_argument(
        "--on-bad",
        choices=["skip", "refuse"],
        default="refuse",
        help="bad rows of --prior or --stream: refuse, or skip",
    )
    b.add_argument("--seed", type=int)
    b.add_argument("--embedder", default="minilm", help=f"one of {', '.join(EMBEDDER_NAMES)}")
    b.add_argument(
        "--predictor-embedder",
        default=STACK_EMBEDDER,
        help=f"the per-prompt predictor's vectors (default {STACK_EMBEDDER}, as coserve train; classifier: --embedder)",
    )
    b.set_defaults(func=cmd_bench_adapt)


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
    b.add_argument("--n", type=at_least(1), default=200, help="decisions per prompt length")
    b.add_argument(
        "--embedders",
        help="compare embedder variants, ';'-separated, e.g. 'minilm;minilm:max_tokens=128;minilm-static' "
        "(default: the library's own router)",
    )
    b.add_argument(
        "--blas-threads",
        type=at_least(0),
        default=1,
        help="BLAS threads while timing (1: the engine's limit; 0: no limit)",
    )
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_route)
    b = bench.add_parser("serve", help="coserve's residencies and a real peer, alternating runs of one workload")
    add_library_arg(b)
    from coserve.bench.serve_options import add_arguments as bench_serve_arguments

    bench_serve_arguments(b)
    b.set_defaults(func=cmd_bench_serve)
    b = bench.add_parser("cluster", help="coserve on Ray against Ray Serve's multiplexing, on N simulated nodes")
    add_library_arg(b)
    from coserve.bench.cluster_options import add_arguments as bench_cluster_arguments

    bench_cluster_arguments(b)
    b.set_defaults(func=cmd_bench_cluster)
    _add_adapt_parser(bench)
