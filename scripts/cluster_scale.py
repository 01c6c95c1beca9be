#!/usr/bin/env python3
"""What one ingress holds and writes as the library grows: replica-choice state and decision-log volume.

    .venv/bin/python scripts/cluster_scale.py [--rows 20000] [--json docs/data/cluster-scale.json]

Replica-choice state: the ingress's ``HostBook`` (coserve.distributed.ray_choice), filled the way a
running ingress fills it (each host reports its experts' tiers, names arriving as fresh strings as
they do from Ray), and measured with ``sys.getsizeof`` over every object it holds (shared objects
counted once). Sizes as in scripts/plan_scale.py: 10 experts on 3 nodes, 100 on 30, 1,000 on 100.
Two placements each: one replica per expert (spread evenly: what the planner gives when memory is
tight) and every expert on every node (the bound: nodes x experts tier entries). Also the median
time of one replica choice: ``HostBook.choose``, which looks only at the expert's hosts (its
expert -> hosts index), and ``scan_choose_us``: the same choice made by scanning every node, as the
book did before the index (``scan_choice`` below; the script checks both pick the same host).

Decision-log volume: ``--rows`` rows written through the real store (coserve.store.log.DecisionLog,
SQLite in WAL mode), then checkpointed; bytes per row = file size / rows, without texts (the
default) and with texts (``server.log.store_text``: a benchmark prompt and a 24-token answer).
Volume per day = bytes per row x request rate x 86,400, at 1 request/s per expert (10, 100, 1,000
requests/s), the rate split over the ingress replicas that write it.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coserve.bench.provenance import write_data  # noqa: E402
from coserve.bench.workload import PROMPTS  # noqa: E402
from coserve.cli.common import at_least  # noqa: E402
from coserve.distributed.ray_choice import HostBook, HostView, choose_host  # noqa: E402
from coserve.store.log import DecisionLog, DecisionRow, connect  # noqa: E402
from coserve.store.retention import PRUNE_BATCH_ROWS, Retention, prune_batch  # noqa: E402
from coserve.types import Tier  # noqa: E402

SIZES = ((10, 3), (100, 30), (1000, 100))  # (experts, nodes), as scripts/plan_scale.py
REQUESTS_PER_EXPERT_S = 1.0  # the assumed request rate per expert in the library
RETENTION_DAYS = (1, 7, 30)  # server.log.retention.max_age for the steady-state file sizes
TIERS = ("active", "ram", "disk")


def deep_size(root: object) -> int:
    """Bytes of ``root`` and everything it holds (dicts, sets, lists, tuples, strings, numbers); an
    object reached twice is counted once; enum members (shared by every process) are not counted."""
    import enum

    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, enum.Enum):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.append(vars(item))  # an object: its attributes
    return total


def filled_book(experts: int, nodes: int, everywhere: bool, seed: int = 0) -> tuple[HostBook, list[str]]:
    """A HostBook as an ingress holds it after every host reported once."""
    rng = random.Random(seed)
    names = [f"expert-{i:04d}" for i in range(experts)]
    node_names = [f"node-{j:03d}" for j in range(nodes)]
    placed = {n: (list(names) if everywhere else names[j::nodes]) for j, n in enumerate(node_names)}
    book = HostBook(placed)
    for node, hosted in placed.items():
        report = json.loads(json.dumps({e: rng.choice(TIERS) for e in hosted}))  # fresh strings, as from Ray
        book.report(node, report)
    return book, names


def scan_choice(book: HostBook, expert: str, now: float) -> str | None:
    """The choice as the book made it before its index: a view of every node, then the best."""
    views = []
    for node, experts in sorted(book.placed.items()):
        able = expert in experts and book.down_until[node] <= now
        views.append(HostView(node, book.tiers[node].get(expert, Tier.DISK) if able else None, book.in_flight[node]))
    return choose_host(views)


def choice_time_us(book: HostBook, names: list[str], scan: bool, repeats: int = 2000) -> float:
    """Median microseconds of one choice (the book's, or ``scan_choice``) over ``repeats`` experts
    (in batches of 100)."""
    rng = random.Random(1)
    batches = []
    for _ in range(repeats // 100):
        picks = [rng.choice(names) for _ in range(100)]
        start = time.perf_counter()
        for expert in picks:
            scan_choice(book, expert, 0.0) if scan else book.choose(expert, now=0.0)
        batches.append((time.perf_counter() - start) / 100 * 1e6)
    mismatched = [e for e in names if scan_choice(book, e, 0.0) != book.choose(e, now=0.0)]
    assert not mismatched, f"the index and the scan disagree for {mismatched[:5]}"
    return statistics.median(batches)


def log_bytes_per_row(rows: int, store_text: bool) -> tuple[float, float]:
    """Bytes the SQLite decision log takes per row (WAL checkpointed into the file), and the rows a
    second retention deletes (``prune_batch`` batch after batch over the same rows, made two days old)."""
    rng = random.Random(2)
    prompts = [p for group in PROMPTS.values() for p in group]
    answer = " ".join(["token"] * 24)  # about a 24-token answer
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decisions.sqlite"
        log = DecisionLog(path, store_text=store_text).start()
        now = time.time() - 2 * 86400  # two days old: a one-day retention deletes them all
        for i in range(rows):
            prompt = rng.choice(prompts)
            log.record(
                DecisionRow(
                    id=f"chatcmpl-{i:08d}-{int(now * 1000) + i}",
                    time=now + i * 0.01,
                    model="coserve",
                    expert=f"expert-{rng.randrange(1000):04d}",
                    category=rng.choice(list(PROMPTS)),
                    confidence=rng.random(),
                    reason="routed",
                    fallback_from=None,
                    status="200",
                    latency_s=rng.uniform(0.2, 20.0),
                    prompt_tokens=rng.randrange(10, 200),
                    completion_tokens=24,
                    prompt=json.dumps([{"role": "user", "content": prompt}]) if store_text else None,
                    completion=answer if store_text else None,
                )
            )
        log.close()
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        conn = connect(path)
        retention, kept = Retention(max_age_s=86400.0), rows
        start = time.perf_counter()
        while kept:
            kept -= prune_batch(conn, retention, kept)
        pruned_per_s = rows / (time.perf_counter() - start)
        conn.close()
    return size / rows, pruned_per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--note",
        default="machine state not stated",
        help="the machine's state, e.g. 'quiet machine, nothing else running'",
    )
    parser.add_argument("--rows", type=at_least(1), default=20000, help="rows written to measure the log")
    parser.add_argument("--json", default=str(ROOT / "docs" / "data" / "cluster-scale.json"))
    args = parser.parse_args()
    measured = {"without_text": log_bytes_per_row(args.rows, False), "with_text": log_bytes_per_row(args.rows, True)}
    per_row = {k: v[0] for k, v in measured.items()}
    pruned_per_s = {k: v[1] for k, v in measured.items()}
    print(f"decision log: {per_row['without_text']:.0f} bytes/row, {per_row['with_text']:.0f} with texts; "
          f"retention deletes {pruned_per_s['without_text']:.0f} rows/s "
          f"({pruned_per_s['with_text']:.0f} with texts)")  # fmt: skip
    sizes: list[dict[str, Any]] = []
    for experts, nodes in SIZES:
        row: dict[str, Any] = {"experts": experts, "nodes": nodes}
        for label, everywhere in (("one_replica_each", False), ("every_expert_on_every_node", True)):
            book, names = filled_book(experts, nodes, everywhere)
            entries = sum(len(t) for t in book.tiers.values())
            row[label] = {
                "tier_entries": entries,
                "bytes": deep_size(book),
                "choose_us": choice_time_us(book, names, scan=False),
                "scan_choose_us": choice_time_us(book, names, scan=True),
            }
        rate = experts * REQUESTS_PER_EXPERT_S
        row["requests_per_s"] = rate
        row["log_bytes_per_day"] = {k: v * rate * 86400 for k, v in per_row.items()}
        # With server.log.retention.max_age of D days the file stops growing at D days of rows (SQLite
        # reuses the pages retention frees; the file does not shrink below its peak without VACUUM).
        row["log_bytes_kept"] = {
            f"{d}d": {k: v * d for k, v in row["log_bytes_per_day"].items()} for d in RETENTION_DAYS
        }
        sizes.append(row)
        bound = row["every_expert_on_every_node"]
        one, per_day = row["one_replica_each"], row["log_bytes_per_day"]["without_text"]
        print(f"{experts:>5} experts {nodes:>4} nodes: book {one['bytes'] / 1024:.1f} KiB "
              f"(bound {bound['bytes'] / 2**20:.2f} MiB, {bound['tier_entries']} entries), choose "
              f"{one['choose_us']:.1f} us (scan {one['scan_choose_us']:.1f} us; bound {bound['choose_us']:.1f} / "
              f"{bound['scan_choose_us']:.1f} us); log {per_day / 1e9:.2f} GB/day at {rate:g} req/s")  # fmt: skip
    payload = {
        "what": "per ingress: replica-choice state (HostBook) and decision-log volume as the library grows",
        "assumption": f"{REQUESTS_PER_EXPERT_S:g} request/s per expert; the log volume is split over ingress replicas",
        "note": f"bytes are exact for this Python (sys.getsizeof); choose_us (the index) and scan_choose_us (every "
        f"node scanned, as before the index) are timings; {args.note}",
        "log_rows_measured": args.rows,
        "log_bytes_per_row": per_row,
        "log_rows_pruned_per_s": pruned_per_s,
        "prune_batch_rows": PRUNE_BATCH_ROWS,
        "sizes": sizes,
    }
    write_data(Path(args.json), payload, [".venv/bin/python", "scripts/cluster_scale.py", *sys.argv[1:]])
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
