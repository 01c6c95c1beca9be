"""Where a figure came from: the command, commit, date, CPU model and cores recorded beside it.

Every file under docs/data/ carries a ``provenance`` object written by ``record``, so a number quoted
in the docs can be traced to the run that produced it and reproduced. This module knows nothing
about what was measured.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coserve.cpus import usable_cores

__all__ = ["RUNTIME_ENV", "cpu_model", "git_commit", "provenance", "write_data"]

_CODE_PATHS = ("coserve", "scripts", "pyproject.toml", "requirements-models.txt", "requirements-suites.txt")
# Variables that change how fast the runtimes run (threads, how they wait, heap arenas): recorded when set.
RUNTIME_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "COSERVE_MALLOC_ARENAS")


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it ("unknown" where it does not)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit, with ``-dirty`` when the code (package, scripts, project file) differs
    from it; changed docs do not count, since a run rewrites its own data files ("unknown" outside git)."""
    where = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *(f":/{path}" for path in _CODE_PATHS)],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def provenance(command: str | list[str] | None = None) -> dict[str, Any]:
    """The record of this run: command (default: this process's argv), commit, UTC date, CPU, cores,
    and the runtime variables of ``RUNTIME_ENV`` that are set (``env``, absent when none is)."""
    if command is None:
        command = [Path(sys.argv[0]).name, *sys.argv[1:]]
    if isinstance(command, list):
        command = shlex.join(command)
    env = {key: os.environ[key] for key in RUNTIME_ENV if key in os.environ}
    return {
        "command": command,
        "commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
    } | ({"env": env} if env else {})


def write_data(
    path: Path, payload: dict[str, Any], command: str | list[str] | None = None, wall_seconds: float | None = None
) -> Path:
    """Write ``payload`` as JSON with its ``provenance`` (overriding any the payload carries); with
    ``wall_seconds``, the run's wall time in seconds too."""
    record = provenance(command) | ({"wall_seconds": round(wall_seconds, 2)} if wall_seconds is not None else {})
    body = {"provenance": record, **{k: v for k, v in payload.items() if k != "provenance"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path
