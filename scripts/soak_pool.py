#!/usr/bin/env python3
"""Soak: load and unload a real expert many times through the pool; report resident memory drift.

Each cycle moves the expert DISK -> RAM -> ACTIVE, generates a few greedy tokens, and evicts it
back to DISK (runtime unloaded, file pages dropped). RSS is sampled after every cycle; drift is measured from the
mean of cycles 41-60 (after allocator warm-up) to the mean of the last 20 cycles. That needs 80 cycles:
with fewer, the drift is read from the first cycle's sample (warm-up included: a smoke run, not a
measurement; ``drift_from`` says which) and no trend is given.

    .venv/bin/python scripts/soak_pool.py --cycles 500 --expert general --json /tmp/soak.json
    (--backend llamacpp: another backend than the library's for the expert)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from coserve.backends.registry import backend_entry, check_library, get_backend
from coserve.bench.script_run import run_script
from coserve.cli.common import at_least
from coserve.config import load_library
from coserve.engine.pool import ExpertPool
from coserve.types import Chunk, Message, Sampling

WARM_UP = 40  # cycles before the allocator settles
WINDOW = 20  # cycles averaged at each end of the drift
MEASURED = WARM_UP + 2 * WINDOW  # the fewest cycles whose drift starts after the warm-up (80)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def soak(cycles: int, expert: str, backend_name: str | None = None) -> dict[str, object]:
    library = check_library(load_library())
    backend_name = backend_name or library.expert(expert).backend
    backend = get_backend(backend_name)
    pool = ExpertPool(library, dict.fromkeys(library.expert_names, backend), 2**31)
    loop = asyncio.get_running_loop()
    samples: list[int] = []
    start = time.monotonic()

    async def use(name: str) -> None:
        lease = await pool.acquire(name)
        try:
            await loop.run_in_executor(
                None, backend.stream, lease.handle, (Message("user", "Say hi."),), Sampling(4, 0.0), _ignore
            )
        finally:
            lease.release()
        pool.evict_when_idle(name)
        await asyncio.sleep(0.01)  # let the eviction run

    for cycle in range(cycles):
        await use(expert)
        assert pool.residency()[expert].value == "disk", "the expert was not evicted"
        samples.append(rss_bytes())
        if (cycle + 1) % 50 == 0:
            print(f"cycle {cycle + 1}: RSS {samples[-1] / 2**20:.1f} MiB", flush=True)
    await pool.close()
    return {
        "cycles": cycles,
        "loads": cycles,
        "expert": expert,
        "backend": backend_name,
        **drift(samples),
        "samples_mib": [round(s / 2**20, 2) for s in samples],
        "seconds": time.monotonic() - start,
    }


def drift(samples: list[int]) -> dict[str, object]:
    """The RSS drift of ``samples`` (bytes, one a cycle): from the mean of cycles 41-60 to the mean of the last
    20; with fewer than ``MEASURED`` cycles, from the first cycle (warm-up included) and no trend."""
    measured = len(samples) >= MEASURED
    base = statistics.mean(samples[WARM_UP : WARM_UP + WINDOW]) if measured else samples[0]
    end = statistics.mean(samples[-WINDOW:])
    return {
        "drift_from": f"cycles {WARM_UP + 1}-{WARM_UP + WINDOW}"
        if measured
        else f"cycle 1 (fewer than {MEASURED} cycles: allocator warm-up included)",
        "rss_start_mib": base / 2**20,
        "rss_end_mib": end / 2**20,
        "drift_pct": 100 * (end - base) / base,
        # the trend, less sensitive to where the two windows happen to fall: a least-squares line
        # through every sample after warm-up, as % of the start per 100 cycles
        "trend_pct_per_100_cycles": _trend(samples[WARM_UP:]) * 100 * 100 / base if measured else None,
        "rss_min_mib": min(samples[WARM_UP:] or samples) / 2**20,
        "rss_max_mib": max(samples[WARM_UP:] or samples) / 2**20,
    }


def _trend(samples: list[int]) -> float:
    """Bytes per cycle, least squares."""
    return statistics.linear_regression(range(len(samples)), samples).slope


def _ignore(chunk: Chunk) -> bool:
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cycles",
        type=at_least(1),
        default=500,
        help=f"load-unload cycles (default 500); the drift's windows need {MEASURED}: with fewer it is read "
        "from the first cycle, warm-up included, and no trend is given (a smoke run)",
    )
    parser.add_argument("--expert", default="general")
    parser.add_argument("--backend", help="default: the expert's backend in the library")
    parser.add_argument("--json")
    args = parser.parse_args()
    names = load_library().expert_names
    if args.expert not in names:
        parser.error(f"--expert {args.expert}: not an expert of the default library ({', '.join(names)})")
    if args.backend is not None:
        backend_entry(args.backend)
    result = asyncio.run(soak(args.cycles, args.expert, args.backend))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_script(main)
