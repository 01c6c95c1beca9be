#!/usr/bin/env python3
"""What the cluster's shared quota and decision log cost an ingress request, measured on a local Ray.

    .venv/bin/python scripts/cluster_state_latency.py [--calls 300] [--callers 4]
                                                      [--json docs/data/cluster-state-latency.json]

Starts a one-node local Ray (no dashboard, no usage report) and Ray Serve, deploys the two
one-replica deployments an application binds (coserve.distributed.cluster_state:
``quota`` = QuotaService, ``decision-log`` = DecisionLogService over a temporary log file) and
times, from this process through deployment handles as an ingress replica calls them:

* ``quota.take`` for a key with a limit (60,000 requests a minute, so none is refused): ``--calls``
  calls one after another (the latency one limited request pays), then ``--callers`` concurrent
  callers making ``--calls`` each (contention: the one replica answers them in turn);
* ``decision-log.write`` of one batch of 256 rows (what an ingress sends every 0.2 s at most);
* the in-process ``Quota.check`` (the single process's cost), for scale.

Medians and 95th percentiles in milliseconds. Timings depend on the machine and its load: the file
records the cores and a note; rerun on a quiet machine for figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "coserve/data"
sys.path.insert(0, str(ROOT))

from coserve.bench.provenance import write_data  # noqa: E402
from coserve.cli.common import at_least  # noqa: E402
from coserve.config import ApiKey  # noqa: E402
from coserve.server.auth import hash_key  # noqa: E402
from coserve.server.quota import Quota  # noqa: E402
from coserve.store.log import DecisionRow  # noqa: E402

KEY = "sk-measured"


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "calls": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3),
    }


async def timed_calls(handle: Any, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        await handle.take.remote(hash_key(KEY), True)
        out.append(time.perf_counter() - start)
    return out


async def measure(quota: Any, decision_log: Any, calls: int, callers: int) -> dict[str, Any]:
    await timed_calls(quota, 20)  # warm the handle and the replica
    sequential = await timed_calls(quota, calls)
    start = time.perf_counter()
    concurrent = await asyncio.gather(*(timed_calls(quota, calls) for _ in range(callers)))
    wall = time.perf_counter() - start
    rows = [
        DecisionRow(f"r{i}", time.time(), "coserve", "small", "chat", 0.9, "map", None, "200", 0.1, 9, 24)
        for i in range(256)
    ]
    batches = []
    for b in range(20):
        batch = [DecisionRow(f"b{b}-{r.id}", *list(r.__dict__.values())[1:]) for r in rows]
        start = time.perf_counter()
        await decision_log.write.remote(batch)
        batches.append(time.perf_counter() - start)
    return {
        "quota_take_sequential": summary(sequential),
        "quota_take_concurrent": {
            **summary([s for caller in concurrent for s in caller]),
            "callers": callers,
            "takes_per_s": round(callers * calls / wall, 1),
        },
        "log_write_256_rows": summary(batches),
    }


def in_process(calls: int) -> dict[str, float]:
    quota = Quota([ApiKey(sha256=hash_key(KEY), requests_per_minute=60000)])
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        quota.check(hash_key(KEY), chat=True)
        out.append(time.perf_counter() - start)
    return summary(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--note",
        default="machine state not stated",
        help="the machine's state, e.g. 'quiet machine, nothing else running'",
    )
    parser.add_argument("--calls", type=at_least(1), default=300)
    parser.add_argument("--callers", type=at_least(1), default=4)
    parser.add_argument("--json", type=Path, default=ROOT / "docs/data/cluster-state-latency.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from coserve.distributed.shared_log import DecisionLogService
    from coserve.distributed.shared_quota import QuotaService

    folder = Path(tempfile.mkdtemp(prefix="coserve-state-"))
    library = folder / "library.yaml"
    data = yaml.safe_load((DATA / "default.yaml").read_text())  # the bundled library, its files made absolute
    data["categories"] = str(DATA / data["categories"])
    data["router"]["outcomes"] = str(DATA / data["router"]["outcomes"])
    data["server"] = {
        "api_keys": [{"sha256": hash_key(KEY), "requests_per_minute": 60000}],
        "log": {"path": str(folder / "decisions.sqlite")},
    }
    library.write_text(yaml.safe_dump(data, sort_keys=False))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        quota, decision_log = (
            serve.run(
                serve.deployment(service)
                .options(name=name, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
                .bind(str(library)),
                name=name,
                route_prefix=None,
            )
            for name, service in (("quota", QuotaService), ("decision-log", DecisionLogService))
        )
        results = asyncio.run(measure(quota, decision_log, args.calls, args.callers))
    finally:
        serve.shutdown()
        ray.shutdown()
    results["in_process_quota_check"] = in_process(args.calls)
    command = [
        "scripts/cluster_state_latency.py",
        "--calls",
        str(args.calls),
        "--callers",
        str(args.callers),
        "--note",
        args.note,
    ]
    payload = {
        "note": f"one-node local Ray; {args.note}; "
        "the concurrent figure is bounded by this one calling process as much as by the replica",
        **results,
    }
    write_data(args.json, payload, command)
    print(args.json.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
