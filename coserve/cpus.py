"""How many threads a CPU runtime should decode with: the cores this process may really use.

``os.cpu_count()`` is the machine's logical CPUs. In a container it is the host's count (64 on a
box where the container may use 2), and on a laptop it counts hyperthreads, which do not speed up
llama.cpp's matrix products. A runtime that starts one busy thread per logical CPU there waits, at
every step, on threads that are not running. So the default is the physical cores among the CPUs
this process is allowed on (its affinity mask), capped by the cgroup's CPU quota (``cpu.max``, or
``cpu.cfs_quota_us`` on cgroup v1) rounded down: a thread over the quota is throttled mid-step.
``limit_blas_threads`` keeps numpy's BLAS to one thread beside decoding experts; ``SpareCores`` says
how many of this process's CPUs other processes left free, for a long matrix job that should not split
its work onto a core another process holds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["SpareCores", "limit_blas_threads", "usable_cores"]


def usable_cores(sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")) -> int:
    """Threads a CPU runtime should use by default (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        cpus = list(range(os.cpu_count() or 1))
    cores = _physical_cores(sys_root, cpus) or len(cpus)
    quota = _cgroup_quota(sys_root, proc_root)
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def _physical_cores(sys_root: Path, cpus: list[int]) -> int | None:
    """Distinct (package, core) pairs among ``cpus``; None where the topology cannot be read."""
    seen = set()
    for cpu in cpus:
        topology = sys_root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            seen.add((package, (topology / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(seen) or None


def _cgroup_quota(sys_root: Path, proc_root: Path) -> float | None:
    """CPUs' worth of time the cgroup allows (the tightest of this cgroup and its parents); None: no limit."""
    try:
        lines = (proc_root / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    root = sys_root / "fs" / "cgroup"
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue  # not a cgroup line
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: cpu.max of this cgroup and of each parent
            folder = root / path.strip().lstrip("/")
            for level in [folder, *folder.parents]:
                limits.extend(_v2_limit(level / "cpu.max"))
                if level == root:
                    break
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own tree
            for mount in ("cpu,cpuacct", "cpu"):
                found = _v1_limit(root / mount / path.strip().lstrip("/")) or _v1_limit(root / mount)
                if found:
                    limits.extend(found)
                    break
    return min(limits) if limits else None


def _v2_limit(path: Path) -> list[float]:
    try:
        quota, period = path.read_text().split()[:2]
        if quota == "max":
            return []
        limit = int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return []  # unreadable or not a limit: none counted
    return [limit] if limit > 0 else []


def _v1_limit(folder: Path) -> list[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def limit_blas_threads() -> None:
    """One BLAS thread for the router's matrix products, in this whole process.

    The router embeds each prompt with numpy. OpenBLAS's worker threads spin for a while after
    every product, and an expert decoding on the same cores waits on its slowest thread at every
    step: with two cores, embedding 2 prompts/s cut `large`'s throughput from 1.11 to 0.72 req/s;
    with one BLAS thread it stays at 1.04-1.07 req/s, and an embedding takes 9 ms instead of 6 ms
    (docs/decisions.md, 2026-11-30).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


class SpareCores:
    """The CPUs of this process's affinity mask that other processes left free since the last reading.

    A BLAS product splits its work evenly over its threads and waits for the slowest; where another
    process holds one of two cores, the thread sharing it runs at half speed and so does the product:
    distilling the static router table took 2.8x as long beside one busy core with OpenBLAS's two
    threads, and no longer with one (docs/decisions.md, session 18). Each call reads ``/proc/stat``
    (the busy time of the mask's CPUs) and this process's own time, and returns the CPUs the others
    did not use over the interval, rounded; None where /proc cannot be read (not Linux)."""

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        self.proc_root = proc_root
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._reading()

    def _reading(self) -> tuple[float, int, int] | None:
        """(monotonic seconds, busy ticks of the mask's CPUs, this process's ticks), or None."""
        wanted = {f"cpu{cpu}" for cpu in self.cpus}
        try:
            busy = 0
            for line in (self.proc_root / "stat").read_text().splitlines():
                fields = line.split()
                if fields and fields[0] in wanted:
                    ticks = [int(x) for x in fields[1:]]
                    busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
            own = (self.proc_root / "self" / "stat").read_text().rsplit(")", 1)[1].split()
            return time.monotonic(), busy, int(own[11]) + int(own[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            return None

    def __call__(self) -> int | None:
        """CPUs of the mask the other processes left free since the last call (0 to all of them)."""
        now, last = self._reading(), self._last
        self._last = now
        if now is None or last is None or not self.cpus or now[0] <= last[0]:
            return None
        others = ((now[1] - last[1]) - (now[2] - last[2])) / (self.tick * (now[0] - last[0]))
        return max(0, min(len(self.cpus), round(len(self.cpus) - max(0.0, others))))
