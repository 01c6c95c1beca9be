"""``coserve experts | keys | log``: what a library holds, its API keys, and what it has answered."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from coserve.cli.common import Subcommands, add_library_arg, load_served_library, write_router_dir
from coserve.errors import CoserveError
from coserve.jsonl import write_row

__all__ = [
    "add_experts_parser",
    "add_keys_parser",
    "add_log_parser",
    "cmd_experts",
    "cmd_experts_add",
    "cmd_keys_hash",
    "cmd_log",
    "cmd_log_prune",
]


def cmd_experts(args: argparse.Namespace) -> int:
    from coserve.assets import is_assembled, source_size
    from coserve.backends.registry import capabilities, get_backend
    from coserve.engine.budgets import check_budgets

    library = load_served_library(args.library)
    base = library.path.parent if library.path else None
    # As `coserve serve` reads them at start: experts over a memory budget alone, and RAM short of ACTIVE's weights.
    never, memory_warning = check_budgets(library, {spec.name: get_backend(spec.backend) for spec in library.experts})
    routed = _routed_categories(library)
    rows: list[dict[str, Any]] = []
    for spec in library.experts:
        size = source_size(spec, base) if spec.parts else None  # None: no file (the backend takes none) or missing
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
                "capabilities": sorted(capabilities(spec)),  # measured by the library check
                "bytes": size,
                "loaded_bytes": loaded,
                "tier": "missing" if spec.parts and size is None else "refused" if spec.name in never else "disk",
                "refused": never.get(spec.name),  # why it can never load within the budgets (None: it can)
                "source": location,
                "categories": [c for c, e in routed.items() if e == spec.name],
            }
        )
    if args.json:
        print(json.dumps({"library": str(library.path), "experts": rows, "memory_warning": memory_warning}, indent=2))
        return 0
    print(f"library: {library.path}")
    print(
        f"{'name':<10} {'backend':<14} {'params':>7} {'size':>9} {'loaded':>9} {'context':>7} {'tier':<7} "
        f"{'categories':<24} source"
    )
    for r in rows:
        if r["bytes"] is None:  # a file that is not there, or a backend that takes none (fake, openai)
            size_text = "missing" if r["tier"] == "missing" else "no file"
        else:
            size_text = f"{r['bytes'] / 2**20:.0f} MiB"
        loaded_text = f"{r['loaded_bytes'] / 2**20:.0f} MiB" if r["loaded_bytes"] is not None else "-"
        print(
            f"{r['name']:<10} {r['backend']:<14} {r['params_b']:>6.2f}B {size_text:>9} {loaded_text:>9} "
            f"{r['context']:>7} {r['tier']:<7} {','.join(r['categories']):<24} {r['source']}"
        )
    for r in rows:
        if r["refused"]:
            print(f"refused: {r['refused']}")
    if memory_warning:
        print(f"warning: {memory_warning}")
    fallback = library.router.fallback
    print(
        f"fallback: {fallback.expert} below confidence {fallback.min_confidence}; "
        f"memory: ram {library.memory.ram / 2**30:.1f} GiB, active {library.memory.active / 2**30:.1f} GiB"
    )
    return 0


def _routed_categories(library: Any) -> dict[str, str]:
    """Category -> expert as the server routes: the library's map, or its trained router's (read here, so
    a ``router.trained`` folder that is missing or names experts the library lacks is refused as at start)."""
    if library.router.trained is None:
        return dict(library.router.map)
    from coserve.router.router import library_trained

    trained, _ = library_trained(library)
    if trained.classifier is None:  # a per-prompt router (prompt-*): no category decides its choice
        return {}
    return {c: trained.experts[e] for c, e in zip(trained.classes, trained.assignment or [], strict=False)}


def cmd_experts_add(args: argparse.Namespace) -> int:
    from coserve.config import check_name
    from coserve.eval.data import load_expert_scores
    from coserve.router.online_calibration import PRIOR_FIT_FILE
    from coserve.router.trained import add_expert, load_trained

    router = load_trained(args.router)
    before = {c: router.experts[e] for c, e in zip(router.classes, router.assignment, strict=True)}
    scores = load_expert_scores(args.outcomes, args.name)
    add_expert(router, args.name, scores, params_b=args.params_b, price=args.price)
    try:  # as coserve train notes of its data's names: added for load_trained, refused by a server
        check_name(args.name, "expert")
    except ValueError as exc:
        print(f"coserve: note: --name: {exc}; a server refuses this router until it is renamed", file=sys.stderr)
    out = Path(args.router).resolve()  # a link to a router: the router it names is replaced, the link kept

    calibration = out / PRIOR_FIT_FILE
    stale = calibration.exists()

    def write(folder: Path) -> None:
        # its other files as they were, less the change detector's calibration: out-of-fold predictions
        # for the old experts, which this command cannot remake (it has neither the other experts'
        # scores nor the prompts' vectors); the server would warn at start that it does not fit
        shutil.copytree(out, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(PRIOR_FIT_FILE))
        router.save(folder)

    write_router_dir(out, write)  # a failed save leaves the old router whole
    matched = sum(1 for i in router.train_ids if str(i) in scores)
    print(f"coserve: added {args.name} ({matched}/{len(router.train_ids)} training prompts matched) to {args.router}")
    if stale:
        print(f"  removed {PRIOR_FIT_FILE} (the change detector's calibration, made for the old experts): "
              "coserve train remakes it")  # fmt: skip
    if matched < len(router.train_ids):
        _print_coverage(router, args.name, scores)
    for c, e in zip(router.classes, router.assignment, strict=True):
        expert = router.experts[e]
        print(f"  {c:<24} -> {expert}" + ("" if before.get(c) == expert else f"   (was {before.get(c)})"))
    return 0


def _print_coverage(router: Any, name: str, scores: dict[str, float]) -> None:
    """How many of each category's training prompts the added expert is scored on; in a category with
    none, its mean over the prompts it is scored on stands in (coserve.router.trained.add_expert)."""
    counts = []
    for k, category in enumerate(router.classes):
        ids = [str(i) for i, c in zip(router.train_ids, router.train_category, strict=True) if c == k]
        counts.append((category, sum(i in scores for i in ids), len(ids)))
    print("  scored prompts per category: " + ", ".join(f"{c} {n}/{total}" for c, n, total in counts))
    empty = [c for c, n, _ in counts if n == 0]
    if empty:
        known = [scores[str(i)] for i in router.train_ids if str(i) in scores]
        mean = sum(known) / len(known)
        print(f"  no scores in {', '.join(empty)}: its mean over the prompts it is scored on ({mean:.3f}) stands in")


def cmd_keys_hash(args: argparse.Namespace) -> int:
    from coserve.server.auth import hash_key

    if not args.key.strip():
        raise CoserveError("the key is empty")
    print(hash_key(args.key.strip()))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    import csv
    from dataclasses import fields
    from datetime import UTC, datetime

    from coserve.paths import decision_log_path
    from coserve.store.log import DecisionRow, query_decisions

    for flag, value in (("--limit", args.limit), ("--last", args.last)):
        if value is not None and value < 1:  # SQLite would read -1 as "no limit"
            raise CoserveError(f"{flag} {value}: give 1 or more (leave it out for every row)")
    if args.limit is not None and args.last is not None:
        raise CoserveError("--limit keeps the oldest rows and --last the newest: give one of them")
    db = Path(args.db) if args.db else decision_log_path()
    if not db.is_file():
        elsewhere = "" if args.db else "; a library's server.log.path keeps it elsewhere: name that file with --db"
        raise CoserveError(f"no decision log at {db}{elsewhere}")
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise CoserveError(f"--since {args.since!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00)") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # a time without a zone is UTC
    newest = args.last is not None
    rows = query_decisions(
        db, since=since, expert=args.expert, limit=args.last if newest else args.limit, newest=newest
    )
    for row in rows:
        row["time"] = datetime.fromtimestamp(row["time"], UTC).isoformat(timespec="milliseconds")
    out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        if args.format == "csv":
            columns = list(rows[0]) if rows else [*(f.name for f in fields(DecisionRow)), "feedback"]
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                write_row(out, row)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.out:
        print(f"coserve: {len(rows)} decisions -> {args.out}", file=sys.stderr)
    return 0


def cmd_log_prune(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from coserve.config import load_library
    from coserve.config_log import RetentionSettings
    from coserve.server.app import decision_log_file
    from coserve.store.log import connect
    from coserve.store.retention import Retention, prune_all

    library = load_library(args.library)
    db = Path(args.prune_db) if args.prune_db else decision_log_file(library)
    if not db.is_file():
        raise CoserveError(f"no decision log at {db}")
    configured = library.server.log.retention
    if configured is None and args.max_age is None and args.max_rows is None:
        raise CoserveError(
            f"nothing to prune: {library.path} sets no server.log.retention; give --max-age, --max-rows or both"
        )
    try:  # a limit given here replaces the library's (checked the same way)
        settings = RetentionSettings(
            max_age=args.max_age if args.max_age is not None else configured and configured.max_age,
            max_rows=args.max_rows if args.max_rows is not None else configured and configured.max_rows,
        )
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise CoserveError(f"nothing to prune with these limits: {problems}") from None
    retention = Retention.from_settings(settings)
    assert retention is not None
    conn = connect(db)
    try:
        deleted, kept = prune_all(conn, retention)
    finally:
        conn.close()
    print(f"coserve: {deleted} decisions pruned from {db}, {kept} kept")
    return 0


def add_experts_parser(sub: Subcommands) -> None:
    p = sub.add_parser("experts", help="list the library's experts")
    add_library_arg(p)
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


def add_keys_parser(sub: Subcommands) -> None:
    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_action", required=True)
    k = keys.add_parser("hash", help="print a key's sha256, to put in the library's server.api_keys")
    k.add_argument("key")
    k.set_defaults(func=cmd_keys_hash)


def add_log_parser(sub: Subcommands) -> None:
    p = sub.add_parser("log", help="query and export the decision log")
    p.add_argument("--db", help="the log's database (default: $COSERVE_CACHE/decisions.sqlite)")
    p.add_argument("--since", help="only requests at or after this ISO 8601 time (UTC unless it says)")
    p.add_argument("--expert", help="only requests this expert answered")
    p.add_argument("--limit", type=int, help="at most this many rows: the oldest that match")
    p.add_argument("--last", type=int, help="the latest this many rows that match (listed oldest first)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--out", help="write here instead of stdout")
    p.set_defaults(func=cmd_log)
    actions = p.add_subparsers(dest="log_action")
    prune = actions.add_parser("prune", help="delete what the log's retention says must go, now")
    add_library_arg(prune)
    prune.add_argument("--db", dest="prune_db", help="the log's database (default: the library's server.log)")
    prune.add_argument("--max-age", help="delete rows older than this (7d, 12h, seconds); default: the library's")
    prune.add_argument("--max-rows", type=int, help="keep at most this many rows; default: the library's")
    prune.set_defaults(func=cmd_log_prune)
