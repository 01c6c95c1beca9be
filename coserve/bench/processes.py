"""Servers in child processes on loopback, for benchmarks and tests: a free port, and waiting until
a started server answers. It knows nothing about what the server serves."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx

__all__ = ["free_port", "wait_until_up"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float, ok_below: int = 500) -> None:
    """Poll ``url`` until it answers with a status below ``ok_below``; RuntimeError if the process
    exits first or ``timeout_s`` passes (the caller stops the process)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code < ok_below:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")
