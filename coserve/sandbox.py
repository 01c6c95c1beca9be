"""Run untrusted Python (a model's program and its tests) in a separate, fenced process.

    process   -> ``python -I`` (no site dir of the user, no environment hooks), its own session
    fences    -> a fresh temporary working directory, an empty environment, resource limits (address
                 space, CPU seconds, file size, open files), a wall-clock time-out that kills the
                 whole process group
    network   -> a new network namespace with no interfaces (``unshare -rn``) where the kernel
                 allows one; a socket guard inside the program as well (and alone, elsewhere)

Outcome: ``passed`` (exit 0), ``failed`` (any other exit, with the last line of stderr) or
``timeout``. Used by HumanEval's grader (coserve.outcomes.suites) and by the cascade's example runner
(coserve.router.examples). This module knows nothing about suites, models or routing.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

__all__ = ["SandboxResult", "network_isolation", "run_python"]

# Run first inside the child: no new sockets, even where no network namespace can be made.
_PRELUDE = """\
import socket as _s
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")
_s.socket = _no_network
_s.create_connection = _no_network
_s.socketpair = _no_network
del _s, _no_network
"""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout"
    detail: str = ""  # the last line of stderr for a failure; the limit for a time-out

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def network_isolation() -> list[str]:
    """The command prefix that puts the child in an empty network namespace, or [] where none can be made."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    try:
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [unshare, "-rn"] if probe.returncode == 0 else []


def _limits(cpu_s: int, memory_bytes: int, file_bytes: int, open_files: int) -> None:  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(
    program: str,
    timeout_s: float = 10.0,
    memory_bytes: int = 1 << 30,
    file_bytes: int = 16 << 20,
    open_files: int = 64,
) -> SandboxResult:
    """Run ``program`` in a fenced child process and say how it ended (CPU limit: ``timeout_s`` + 1 s,
    rounded down; address space ``memory_bytes``; files written at most ``file_bytes`` each)."""
    with tempfile.TemporaryDirectory(prefix="coserve-sandbox-") as work:
        path = os.path.join(work, "program.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(_PRELUDE + "\n" + program)
        command = [*network_isolation(), sys.executable, "-I", "-B", path]
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        child = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=functools.partial(_limits, max(1, int(timeout_s) + 1), memory_bytes, file_bytes, open_files),
        )
        try:
            _, stderr = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            return SandboxResult("timeout", f"no exit within {timeout_s:g} s")
        if child.returncode == 0:
            return SandboxResult("passed")
        if child.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not stderr:
            return SandboxResult("timeout", f"CPU limit of {int(timeout_s) + 1} s")
        lines = stderr.decode("utf-8", "replace").strip().splitlines()
        return SandboxResult("failed", lines[-1][:300] if lines else f"exit status {child.returncode}")


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.communicate()
