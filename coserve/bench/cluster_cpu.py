"""CPU seconds each process of a Ray test cluster spent over a stretch of time (a benchmark run), by
role: the raylets, GCS, dashboard, Serve controller, HTTP proxy, each deployment's replicas, idle
workers and the benchmark's own driver.

Two ``snapshot``s (user + system CPU seconds of this process and of every process it started: those
of the Ray cluster it started, not another one on the host) and their difference (``cpu_by_role``);
a process that started in between counts from zero, one that ended in between is left out. Reads
the processes through psutil (``coserve[ray]``).
This module knows nothing about what the benchmark runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["cpu_by_role", "ours", "role_of", "snapshot"]

DRIVER = "bench driver (replay client, Ray driver)"
RAY_BINARIES = {"raylet": "raylet", "gcs_server": "gcs_server"}


def role_of(cmdline: Sequence[str], name: str) -> str | None:
    """The role of a process from its command line (Ray's ``ray::`` titles name the actor or task;
    ``ServeReplica:APP:DEPLOYMENT`` is shortened to ``replica DEPLOYMENT``, the method Ray appends while
    one runs is dropped), or None when it is not Ray's."""
    first = cmdline[0] if cmdline else ""
    if first.startswith("ray::"):
        title = first[len("ray::") :].split()[0] if first[len("ray::") :].strip() else "worker"
        title = title.split(".")[0]  # Ray appends the method running now (``ServeController.listen_for_change``)
        if title.startswith("ServeReplica:"):
            return "replica " + title.split(":")[-1]
        return title
    if name in RAY_BINARIES:
        return RAY_BINARIES[name]
    joined = " ".join(cmdline)
    for marker, role in (
        ("dashboard/agent.py", "dashboard agent"),
        ("dashboard/dashboard.py", "dashboard"),
        ("runtime_env/agent", "runtime_env agent"),
        ("ray/_private/log_monitor.py", "log monitor"),
        ("ray/autoscaler", "monitor"),
        ("ray/_private/workers/default_worker.py", "worker"),
    ):
        if marker in joined:
            return role
    return None


def ours() -> list[Any]:
    """This process and every process it started, however deep (a test cluster's GCS, raylets and
    agents, and the raylets' workers): another Ray cluster on the same host is not counted."""
    import psutil

    me = psutil.Process(os.getpid())
    return [me, *me.children(recursive=True)]


def snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (role, user + system CPU seconds so far) for every Ray process of ours and this one."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    me = os.getpid()
    for process in ours():
        try:
            with process.oneshot():
                cmdline, name, times = process.cmdline(), process.name(), process.cpu_times()
        except psutil.Error:  # it ended meanwhile
            continue
        role = DRIVER if process.pid == me else role_of(cmdline, name)
        if role is not None:
            out[process.pid] = (role, float(times.user + times.system))
    return out


def cpu_by_role(before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed by role, largest first (rounded to 10 ms)."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        start = before.get(pid)
        used = seconds - start[1] if start is not None and start[0] == role else seconds
        spent[role] = spent.get(role, 0.0) + max(0.0, used)
    return {role: round(s, 2) for role, s in sorted(spent.items(), key=lambda kv: (-kv[1], kv[0]))}
