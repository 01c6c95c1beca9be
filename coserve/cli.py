"""The ``coserve`` command: serve | route | chat | experts | bench | outcomes | train | eval |
keys | log.

Arguments are parsed in ``main()``; nothing runs at import time. Errors a user can fix (a bad
library file, a missing model package) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from coserve.errors import ConfigError, CoserveError

__all__ = ["main"]


def _library(path: str | None) -> Any:
    from coserve.config import load_library

    return load_library(path)


def _engine(library_path: str | None, residency: str = "lookahead") -> Any:
    from coserve.assets import cache_dir
    from coserve.engine.engine import Engine

    return Engine.build(_library(library_path), cache_dir(), residency=residency)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from coserve.server.app import create_app

    engine = _engine(args.library, args.residency)
    app = create_app(engine)

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            app.state.admission.draining = True  # from the signal on, new requests get 503
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    print(f"coserve: library {engine.library.path} — experts {', '.join(engine.library.expert_names)}", flush=True)
    for name, problem in engine.unavailable.items():
        print(f"coserve: warning: expert {name} cannot load ({problem}); its requests fall back", file=sys.stderr)
    print(f"coserve: serving on http://{args.host}:{args.port}/v1 (model 'coserve' routes)", flush=True)
    # uvicorn re-raises the signal that stopped it once it has drained; a SIGTERM that led to a
    # clean drain is a normal end here (exit 0), so the re-raised one is ignored.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        DrainingServer(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from coserve.assets import cache_dir
    from coserve.router.router import CoERouter
    from coserve.types import Message, Request

    library = _library(args.library)
    router = CoERouter.load_or_fit(library, cache_dir())
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for text in texts:
        decision = router.route(Request((Message("user", text),), "coserve"))
        ranked = sorted(decision.probabilities.items(), key=lambda kv: -kv[1])
        if args.json:
            print(
                json.dumps({"text": text, **decision.as_dict(), "probabilities": {k: round(v, 4) for k, v in ranked}})
            )
        else:
            probs = "  ".join(f"{k} {v:.2f}" for k, v in ranked)
            print(f"{decision.expert:<10} {decision.category or '-':<10} {decision.reason:<15} {probs}   | {text[:60]}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from coserve.types import Message, Request, Sampling

    engine = _engine(args.library)
    history: list[Message] = []

    async def turn(text: str) -> None:
        history.append(Message("user", text))
        request = Request(
            tuple(history), args.model, Sampling(max_tokens=args.max_tokens, temperature=args.temperature)
        )
        decision = await engine.route(request)
        stream = await engine.stream(request, decision)
        label = f"{stream.expert}" + (f" · {decision.category} {decision.confidence:.2f}" if decision.category else "")
        print(f"[{label}] ", end="", flush=True)
        parts = []
        async for chunk in stream.chunks:
            print(chunk.text, end="", flush=True)
            parts.append(chunk.text)
        print()
        history.append(Message("assistant", "".join(parts)))

    async def loop() -> None:
        try:
            while True:
                try:
                    text = await asyncio.get_running_loop().run_in_executor(None, input, "you> ")
                except EOFError:
                    break
                if text.strip() in {"/quit", "/exit"}:
                    break
                if text.strip() == "/reset":
                    history.clear()
                    continue
                if text.strip():
                    try:
                        await turn(text)
                    except CoserveError as exc:
                        history.pop()
                        print(f"error: {exc.message}")
        finally:
            await engine.close()

    print("coserve chat — /reset clears the conversation, /quit or Ctrl-D leaves.")
    asyncio.run(loop())
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    from coserve.assets import is_assembled, source_size
    from coserve.backends.base import get_backend

    library = _library(args.library)
    base = library.path.parent if library.path else None
    rows = []
    for spec in library.experts:
        size = source_size(spec, base)
        loaded = None
        if size is not None and is_assembled(spec, base):  # listing never assembles
            try:  # what the ACTIVE budget counts for it: weights + KV cache + runtime buffers
                loaded = get_backend(spec.backend).footprint(spec, base)
            except CoserveError:
                loaded = None
        if not spec.parts:
            location = "-"
        elif len(spec.parts) == 1:
            location = spec.parts[0]
        else:
            location = f"{len(spec.parts)} parts, {spec.parts[0]} ..."
        rows.append(
            {
                "name": spec.name,
                "backend": spec.backend,
                "params_b": spec.params_b,
                "context": spec.context,
                "price": spec.price.mean,
                "tags": list(spec.tags),
                "bytes": size,
                "loaded_bytes": loaded,
                "tier": "disk" if size is not None else "missing",
                "source": location,
                "categories": [c for c, e in library.router.map.items() if e == spec.name],
            }
        )
    if args.json:
        print(json.dumps({"library": str(library.path), "experts": rows}, indent=2))
        return 0
    print(f"library: {library.path}")
    print(
        f"{'name':<10} {'backend':<14} {'params':>7} {'size':>9} {'loaded':>9} {'context':>7} {'tier':<7} "
        f"{'categories':<24} source"
    )
    for r in rows:
        size_text = f"{r['bytes'] / 2**20:.0f} MiB" if r["bytes"] is not None else "-"
        loaded_text = f"{r['loaded_bytes'] / 2**20:.0f} MiB" if r["loaded_bytes"] is not None else "-"
        print(
            f"{r['name']:<10} {r['backend']:<14} {r['params_b']:>6.2f}B {size_text:>9} {loaded_text:>9} "
            f"{r['context']:>7} {r['tier']:<7} {','.join(r['categories']):<24} {r['source']}"
        )
    fallback = library.router.fallback
    print(
        f"fallback: {fallback.expert} below confidence {fallback.min_confidence}; "
        f"memory: ram {library.memory.ram / 2**30:.1f} GiB, active {library.memory.active / 2**30:.1f} GiB"
    )
    return 0


def cmd_bench_experts(args: argparse.Namespace) -> int:
    from coserve.bench.experts import bench_experts

    result = bench_experts(_library(args.library), tokens=args.tokens, repeats=args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_bench_route(args: argparse.Namespace) -> int:
    from coserve.bench.route import bench_route

    result = bench_route(_library(args.library), n=args.n)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _outcomes(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The outcome set, its embeddings and the expert costs named by ``--data``/``--experts``."""
    from coserve.eval.data import embed_cached, load_costs, load_outcomes
    from coserve.router.embed import make_embedder

    costs = load_costs(args.experts)
    outcomes, problems = load_outcomes(args.data, on_bad=args.on_bad)
    for problem in problems:
        print(f"coserve: skipped {problem}", file=sys.stderr)
    embedder = make_embedder(args.embedder)
    return outcomes, embed_cached(outcomes.prompts, embedder), costs


def cmd_outcomes(args: argparse.Namespace) -> int:
    from coserve.outcomes.runner import done_ids, run_outcomes
    from coserve.outcomes.suites import make_suite

    names = [n.strip() for n in args.suite.split(",") if n.strip()]
    exclude: set[str] = set()
    for path in args.exclude or []:
        exclude |= done_ids(Path(path))
    work = [
        (suite, item) for suite in map(make_suite, names) for item in suite.load(args.limit, args.seed, exclude=exclude)
    ]
    engine = _engine(args.library)

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
            )
        finally:
            await engine.close()

    summary = asyncio.run(run())
    print(summary.table([*engine.library.expert_names, *(["routed"] if args.routed else [])]))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from coserve.outcomes.compare import compare_routed, format_comparison

    library = _library(args.library)
    result = compare_routed(args.data, {e.name: e.params_b for e in library.experts})
    print(format_comparison(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from coserve.eval.data import load_costs, load_outcomes
    from coserve.eval.harness import evaluate
    from coserve.router.embed import make_embedder

    costs = load_costs(args.experts)
    train, problems = load_outcomes(args.data, on_bad=args.on_bad)
    test = None
    if args.test:
        test, more = load_outcomes(args.test, experts=train.experts, on_bad=args.on_bad)
        problems += more
    for problem in problems:
        print(f"coserve: skipped {problem}", file=sys.stderr)
    routers = [r.strip() for r in args.routers.split(",") if r.strip()] if args.routers else None
    report = evaluate(
        train,
        test,
        costs,
        folds=args.folds,
        seed=args.seed,
        routers=routers,
        embedder=make_embedder(args.embedder),
        jobs=args.jobs,
    )
    report["meta"].update(data=str(args.data), test=args.test, skipped_rows=len(problems))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        from coserve.eval.plot import plot_report

        plot_report(report, args.plot, title=Path(args.data).parent.name + "/" + Path(args.data).name)
    base = report["baselines"]
    print(f"{'baseline':<40} {'quality':>8} {'params_b':>9} {'price':>7}")
    for name, b in base.items():
        print(f"{name:<40} {b['quality']:>8.3f} {b['avg_params_b'] or float('nan'):>9.2f} {b['avg_price'] or 0:>7.3f}")
    print(f"{'router':<26} {'auc':>6} {'q@best':>7} {'min_budget':>10} {'gap_closed':>10}")
    for name, entry in report["routers"].items():
        m = entry["metrics"]
        auc = m.get("auc_" + m["cost_axis"])
        print(
            f"{name:<26} {_fmt(auc):>6} {_fmt(m['quality_at_best_single_budget']):>7} "
            f"{_fmt(m['min_budget_for_best_single_quality']):>10} {_fmt(m['oracle_gap_closed']):>10}"
            + (f"  apgr {_fmt(m['apgr'])}" if "apgr" in m else "")
        )
    print(f"report: {args.json}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cmd_train(args: argparse.Namespace) -> int:
    from coserve.eval.train import train_router

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
    router.save(args.out)
    mapping = {c: router.experts[e] for c, e in zip(router.classes, router.assignment, strict=True)}
    print(f"coserve: trained {router.kind} on {len(outcomes)} prompts -> {args.out}")
    print(f"budget: {router.budget:g} ({router.budget_axis}); fallback: {router.fallback_expert}")
    for category, expert in mapping.items():
        print(f"  {category:<24} -> {expert}")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    """The measured per-category table of a library whose map is solved from outcomes, its maps at
    budgets, each single expert, and the quality/cost front (``--plot``)."""
    import numpy as np

    from coserve.config import measured_inputs
    from coserve.router.mapping import pareto

    library = _library(args.library)
    if library.router.outcomes is None or library.path is None:
        raise ConfigError("this library writes router.map by hand: coserve map needs router.outcomes")
    table, p, cost, budget = measured_inputs(library, library.path)
    p = p / p.sum()
    unit = "USD/M tokens" if library.router.budget.avg_price is not None else "B params"
    print(f"measured on {library.router.outcomes} (mean score; n = rows per category)")
    print(table.format())
    print("category weights: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(table.categories, p, strict=True)))

    def point(mapping: dict[str, str]) -> tuple[float, float]:
        cols = [table.experts.index(mapping[c]) for c in table.categories]
        quality = float(sum(w * table.S[k, e] for k, (w, e) in enumerate(zip(p, cols, strict=True))))
        return float(sum(w * cost[e] for w, e in zip(p, cols, strict=True))), quality

    result: dict[str, Any] = {"categories": list(table.categories), "experts": list(table.experts)}
    result["S"] = table.S.round(4).tolist()
    result["n"] = table.n.astype(int).tolist()
    result["maps"] = []
    budgets = [budget, *(args.budget or [])] if budget is not None else list(args.budget or [None])
    for b in budgets:
        mapping = table.solve(p, cost, b)
        avg_cost, quality = point(mapping)
        label = "unconstrained" if b is None else f"budget {b:g} {unit}"
        print(f"\nmap at {label}: expected quality {quality:.3f}, average cost {avg_cost:.3f} {unit}")
        for category, expert in mapping.items():
            print(f"  {category:<12} -> {expert}")
        result["maps"].append({"budget": b, "map": mapping, "quality": quality, "avg_cost": avg_cost})
    singles = {e: point(dict.fromkeys(table.categories, e)) for e in table.experts}
    print("\nsingle experts (everything to one):")
    for name, (avg_cost, quality) in singles.items():
        print(f"  {name:<12} quality {quality:.3f}, cost {avg_cost:.3f} {unit}")
    result["singles"] = {n: {"avg_cost": c, "quality": q} for n, (c, q) in singles.items()}
    front = pareto(p, table.S, cost)
    result["front"] = [{"avg_cost": m.avg_cost, "quality": m.quality} for m in front]
    if args.plot:
        from coserve.eval.plot import plot_map_frontier

        chosen = {
            f"map @ {m['budget']:g}" if m["budget"] is not None else "best map": (m["avg_cost"], m["quality"])
            for m in result["maps"]
        }
        frontier = [(m.avg_cost, m.quality) for m in front]
        xlabel = f"average cost per request ({unit}, category weights as above)"
        plot_map_frontier(frontier, singles, chosen, args.plot, xlabel, title=f"{library.path.name}: measured maps")
        print(f"\nplot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=lambda v: float(np.asarray(v))))
    return 0


def cmd_experts_add(args: argparse.Namespace) -> int:
    from coserve.eval.data import load_expert_scores
    from coserve.router.trained import add_expert, load_trained

    router = load_trained(args.router)
    before = {c: router.experts[e] for c, e in zip(router.classes, router.assignment, strict=True)}
    scores = load_expert_scores(args.outcomes, args.name)
    add_expert(router, args.name, scores, params_b=args.params_b, price=args.price)
    router.save(args.router)
    matched = sum(1 for i in router.train_ids if str(i) in scores)
    print(f"coserve: added {args.name} ({matched}/{len(router.train_ids)} training prompts matched) to {args.router}")
    for c, e in zip(router.classes, router.assignment, strict=True):
        expert = router.experts[e]
        print(f"  {c:<24} -> {expert}" + ("" if before.get(c) == expert else f"   (was {before.get(c)})"))
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from coserve.bench.serve import run

    return run(_library(args.library), args)


def cmd_keys_hash(args: argparse.Namespace) -> int:
    from coserve.server.auth import hash_key

    if not args.key.strip():
        raise CoserveError("the key is empty")
    print(hash_key(args.key.strip()))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    import csv
    from datetime import UTC, datetime

    from coserve.assets import cache_dir
    from coserve.store.log import query_decisions

    db = Path(args.db) if args.db else cache_dir() / "decisions.sqlite"
    if not db.is_file():
        raise CoserveError(f"no decision log at {db}")
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise CoserveError(f"--since {args.since!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00)") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # a time without a zone is UTC
    rows = query_decisions(db, since=since, expert=args.expert, limit=args.limit)
    for row in rows:
        row["time"] = datetime.fromtimestamp(row["time"], UTC).isoformat(timespec="milliseconds")
    out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        if args.format == "csv":
            columns = list(rows[0]) if rows else ["id"]
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out:
        print(f"coserve: {len(rows)} decisions -> {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coserve", description="A Composition of Experts behind one endpoint.")
    sub = parser.add_subparsers(dest="command", required=True)

    def library_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--library", help="library file (YAML); default: the bundled default library")

    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    library_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM (default 30)",
    )
    p.add_argument(
        "--residency",
        default="lookahead",
        choices=["lookahead", "lru", "load_per_request"],
        help="how experts are ordered and kept loaded (the other two are benchmark baselines)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("route", help="show the routing decision for prompts (no generation)")
    library_arg(p)
    p.add_argument("text", nargs="*", help="prompts; read from stdin, one a line, when none are given")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("chat", help="chat in the terminal through the router")
    library_arg(p)
    p.add_argument("--model", default="coserve", help="'coserve' routes; an expert's name pins it")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("map", help="a library's measured per-category table, its maps at budgets, and the front")
    library_arg(p)
    p.add_argument("--budget", type=float, action="append", help="also solve at this budget (repeatable)")
    p.add_argument("--plot", help="write the quality/cost front as a PNG here")
    p.add_argument("--json", help="write the table, maps and front as JSON here")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("experts", help="list the library's experts")
    library_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_experts)
    actions = p.add_subparsers(dest="experts_action")
    a = actions.add_parser("add", help="add an expert to a trained router from its outcomes (no refitting)")
    a.add_argument("--router", required=True, help="router directory written by coserve train")
    a.add_argument("--name", required=True, help="the new expert's name (its key in the outcome file's scores)")
    a.add_argument("--outcomes", required=True, help="JSONL with id and scores[NAME] on the training prompts")
    a.add_argument("--params-b", type=float, required=True, help="billions of active parameters")
    a.add_argument("--price", type=float, help="USD per million tokens")
    a.set_defaults(func=cmd_experts_add)

    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_action", required=True)
    k = keys.add_parser("hash", help="print a key's sha256, to put in the library's server.api_keys")
    k.add_argument("key")
    k.set_defaults(func=cmd_keys_hash)

    p = sub.add_parser("log", help="query and export the decision log")
    p.add_argument("--db", help="the log's database (default: $COSERVE_CACHE/decisions.sqlite)")
    p.add_argument("--since", help="only requests at or after this ISO 8601 time (UTC unless it says)")
    p.add_argument("--expert", help="only requests this expert answered")
    p.add_argument("--limit", type=int, help="at most this many rows (oldest first)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--out", help="write here instead of stdout")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("experts", help="cold/warm time to first token, decode speed, routing time")
    library_arg(b)
    b.add_argument("--tokens", type=int, default=64, help="tokens to decode per measurement")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_experts)
    b = bench.add_parser("route", help="routing decision time (16/64/256 tokens) and batched throughput")
    library_arg(b)
    b.add_argument("--n", type=int, default=200, help="decisions per prompt length")
    b.add_argument("--json", help="also write the figures to this file")
    b.set_defaults(func=cmd_bench_route)
    b = bench.add_parser("serve", help="coserve's residencies and a real peer, alternating runs of one workload")
    library_arg(b)
    from coserve.bench.serve_options import add_arguments as bench_serve_arguments

    bench_serve_arguments(b)
    b.set_defaults(func=cmd_bench_serve)

    p = sub.add_parser("outcomes", help="run every expert on benchmark suites and write outcome data (JSONL)")
    library_arg(p)
    p.add_argument("--suite", required=True, help="comma-separated suites: mmlu, gsm8k, humaneval, mtbench")
    p.add_argument("--limit", type=int, help="a seeded sample of this many items per suite, spread over topics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL to append to; ids already in it are skipped (resume)")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="answer cap in tokens (default per suite: mmlu 16, gsm8k 256, humaneval/mtbench 384)",
    )
    p.add_argument("--judge", help="the library's expert that rates answers of judged suites (mtbench)")
    p.add_argument("--routed", action="store_true", help="also ask the library's router (column 'routed')")
    p.add_argument("--exclude", action="append", help="skip item ids found in this outcome file (a held-out sample)")
    p.add_argument("--concurrency", type=int, default=2, help="items in flight at once")
    p.add_argument("--with-prompts", action="store_true", help="also store each prompt (for local training)")
    p.set_defaults(func=cmd_outcomes)

    p = sub.add_parser("compare", help="routed vs each single expert, from an outcome file written with --routed")
    library_arg(p)
    p.add_argument("--data", required=True, help="JSONL from coserve outcomes --routed")
    p.add_argument("--json", help="also write the comparison here")
    p.set_defaults(func=cmd_compare)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="outcome data (.jsonl or .csv with score:<expert> columns)")
        p.add_argument("--experts", required=True, help="experts.json with params_b and prices")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--on-bad", choices=["skip", "refuse"], default="refuse", help="what to do with bad rows")
        p.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")

    p = sub.add_parser("eval", help="evaluate routers on outcome data: quality vs cost against baselines")
    data_args(p)
    split = p.add_mutually_exclusive_group()
    split.add_argument("--folds", type=int, default=5, help="prompt-grouped cross-validation folds")
    split.add_argument("--test", help="held-out outcome file: fit on --data, score on this")
    p.add_argument("--json", required=True, help="write the report here")
    p.add_argument("--plot", help="write the Pareto plot (PNG) here")
    p.add_argument("--routers", help="comma-separated router names (default: every available one)")
    p.add_argument("--jobs", type=int, default=1, help="folds evaluated in parallel processes")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="fit a router on outcome data and save it as a directory")
    data_args(p)
    p.add_argument("--out", required=True, help="router directory to write")
    p.add_argument("--router", default="map-logistic", help="map-<classifier>, prompt-<predictor> or hybrid")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-params", type=float, help="average active parameters (billions) per request")
    budget.add_argument("--budget-price", type=float, help="average price (USD per million tokens) per request")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except CoserveError as exc:
        print(f"coserve: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
