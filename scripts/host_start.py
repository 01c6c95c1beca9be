#!/usr/bin/env python3
"""What an expert host saves at start by building no router, measured on the bundled library.

    .venv/bin/python scripts/host_start.py [--library PATH] [--rounds 3] [--json docs/data/host-start.json]

An expert host (coserve.distributed.ray_host.ExpertHost) builds coserve's Engine over its node's
experts. Until session 8 it built the router too (``Engine.build(library, cache)``), which it never
uses: an ingress routes every call before a host sees it. Now it builds ``routed=False``. This
script builds both, each in a fresh Python process, alternating ``--rounds`` times, over the library
(default: the bundled one, its router loaded from the cache as a host loads it, never trained here)
with a host's memory budgets, and reports per variant the median seconds of the build and the
median resident memory (VmRSS) the build added. The experts themselves are not loaded (a host loads
them on first use or when the controller pins them), so the difference is the router's whole cost.

Timings depend on the machine and its load: the file records the cores and a note; rerun on a quiet
machine for figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coserve.bench.script_run import run_script  # noqa: E402
from coserve.cli.common import at_least  # noqa: E402
from coserve.config import load_library  # noqa: E402

VARIANTS = ("with_router", "without_router")
NODE_RAM = 2 * 2**30  # a host's RAM budget (the bundled library's own)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(variant: str, library_path: str | None) -> dict[str, Any]:
    """Build the host's Engine once in this process; its seconds and the memory it added."""
    from coserve.distributed.ray_host import node_library, served_library
    from coserve.engine.engine import Engine
    from coserve.paths import cache_dir

    library = node_library(served_library(library_path), NODE_RAM)
    before = rss_bytes()
    start = time.perf_counter()
    engine = Engine.build(library, cache_dir(), routed=variant == "with_router")
    seconds = time.perf_counter() - start
    added = rss_bytes() - before
    engine.executor.shutdown(wait=False)
    return {"seconds": seconds, "rss_added_bytes": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", default=None, help="library file (default: the bundled one)")
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.library)))
        return
    if args.library:  # a bad file is one line here, not a child's traceback inside the parent's
        load_library(args.library)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:  # alternating: the machine's load hits both alike
            command = [sys.executable, __file__, "--child", variant]
            if args.library:
                command += ["--library", args.library]
            out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
    results = {
        v: {
            "build_s": round(statistics.median(r["seconds"] for r in runs[v]), 3),
            "rss_added_mib": round(statistics.median(r["rss_added_bytes"] for r in runs[v]) / 2**20, 1),
            "runs": runs[v],
        }
        for v in VARIANTS
    }
    saved = {
        "build_s": round(results["with_router"]["build_s"] - results["without_router"]["build_s"], 3),
        "rss_mib": round(results["with_router"]["rss_added_mib"] - results["without_router"]["rss_added_mib"], 1),
    }
    print(json.dumps({"variants": {v: {k: x for k, x in r.items() if k != "runs"} for v, r in results.items()}}))
    print(f"a host saves {saved['build_s']} s and {saved['rss_mib']} MiB at start by building no router")
    if args.json:
        from coserve.bench.provenance import write_data

        command = ".venv/bin/python scripts/host_start.py" + (f" --library {args.library}" if args.library else "")
        command += f" --rounds {args.rounds} --json {args.json}"
        payload = {
            "library": args.library or "bundled (coserve/data/default.yaml)",
            "rounds": args.rounds,
            "variants": results,
            "saved": saved,
            "note": "medians of fresh processes, alternating; measured on a shared 2-core machine",
        }
        write_data(args.json, payload, command)


if __name__ == "__main__":
    run_script(main)
