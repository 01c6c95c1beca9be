"""How long an expert takes to become ACTIVE, against an honest floor for the move it is.

A RAM -> ACTIVE move either reads the weights again (a runtime that maps the file: its floor is
the file's bytes over the page cache's measured bandwidth) or reads none (the weights are already
loaded, only a context is created: its floor is the measured cost of creating an empty context of
that size, i.e. faulting in and zeroing ``footprint - weights`` bytes). Which one a backend does is
measured, not assumed: the process's resident memory grows by the weights during a move that reads
them. A DISK -> ACTIVE move reads the weights: bytes over the disk's measured bandwidth.
It knows nothing about servers or workloads.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from coserve.assets import model_path
from coserve.backends.registry import get_backend
from coserve.backends.staging import read_bandwidth
from coserve.config import LibraryConfig

__all__ = ["HUGEPAGES", "empty_context_s", "measure_switch", "measure_switch_hugepages", "print_switch"]

HUGEPAGES = "glibc.malloc.hugetlb=1"  # glibc asks for transparent huge pages on what malloc maps
RUNS = 3  # moves per expert; the median is reported


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc is not there)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def empty_context_s(nbytes: int) -> float:
    """Seconds to create ``nbytes`` of fresh zeroed memory (what a new context's KV cache and
    buffers cost at least): the median of three allocations, each page touched."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        block = np.empty(max(1, nbytes), dtype=np.uint8)
        block.fill(0)
        times.append(time.perf_counter() - start)
        del block
    return statistics.median(times)


def measure_switch(library: LibraryConfig) -> dict[str, Any]:
    """Per expert: RAM -> ACTIVE (median of ``RUNS``) and DISK -> ACTIVE times, each with its floor."""
    base = library.path.parent if library.path else None
    rows: dict[str, Any] = {}
    for spec in library.experts:
        backend = get_backend(spec.backend)
        path = model_path(spec, base)
        size = path.stat().st_size
        weights = backend.nbytes(spec, base)
        context = max(0, backend.footprint(spec, base) - weights)
        disk_bw = read_bandwidth(path, from_disk=True)
        cache_bw = read_bandwidth(path, from_disk=False)
        staged = backend.stage(spec, base)  # in RAM, through the backend's own tier
        times, growth = [], []
        for _ in range(RUNS):
            before = resident_bytes()
            start = time.perf_counter()
            handle = backend.load(spec, staged)
            times.append(time.perf_counter() - start)
            growth.append(resident_bytes() - before)
            backend.unload(handle)
        backend.unstage(staged)  # now on disk only
        start = time.perf_counter()
        staged = backend.stage(spec, base)
        handle = backend.load(spec, staged)
        from_disk = time.perf_counter() - start
        backend.unload(handle)
        backend.unstage(staged)
        grew = statistics.median(growth)
        # A move that reads the weights grows the process by them on top of the new context (general:
        # a 380 MB context beside 94 MB of weights once passed for a weights read under "grew >= weights / 2").
        reads_weights = grew >= context + weights / 2 if resident_bytes() else True  # unknown: the weights floor
        context_s = empty_context_s(context)
        rows[spec.name] = {
            "bytes": size,
            "context_bytes": context,
            "ram_to_active_s": statistics.median(times),
            "ram_to_active_runs_s": times,
            "resident_growth_bytes": grew,
            "reads_weights": reads_weights,
            "ram_floor": "weights / page-cache bandwidth" if reads_weights else "empty context of context_bytes",
            "ram_floor_s": size / cache_bw if reads_weights else context_s,
            "empty_context_s": context_s,
            "disk_to_active_s": from_disk,
            "disk_floor_s": size / disk_bw,
            "cache_gb_s": cache_bw / 1e9,
            "disk_gb_s": disk_bw / 1e9,
        }
    return rows


def print_switch(switch: dict[str, Any], note: str = "") -> None:
    for expert, row in switch.items():
        print(f"switch {expert:<8} RAM->ACTIVE {row['ram_to_active_s']:.3f} s (floor {row['ram_floor_s']:.3f} s: "
              f"{row['ram_floor']}); DISK->ACTIVE {row['disk_to_active_s']:.2f} s "
              f"(floor {row['disk_floor_s']:.2f} s at {row['disk_gb_s']:.2f} GB/s){note}")  # fmt: skip


def hugepages_on() -> bool:
    return HUGEPAGES in os.environ.get("GLIBC_TUNABLES", "")


def thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "none"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "none"


def measure_switch_hugepages(library: LibraryConfig) -> dict[str, Any] | None:
    """The same measurement in a process whose malloc uses transparent huge pages (a glibc
    tunable, read at process start): a new context's KV cache then faults in 2 MiB pages, not
    4 KiB ones. None where that cannot change anything (no THP, or this process has it already)."""
    if library.path is None or hugepages_on() or thp_mode() not in ("madvise", "always"):
        return None
    tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES", ""), HUGEPAGES) if t)
    out = subprocess.run(
        [sys.executable, "-m", "coserve.bench.switch", str(library.path)],
        env={**os.environ, "GLIBC_TUNABLES": tunables},
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    measured: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return measured


if __name__ == "__main__":
    from coserve.config import load_library

    print(json.dumps(measure_switch(load_library(sys.argv[1]))))
