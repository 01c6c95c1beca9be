"""A real ``coserve serve`` in a subprocess on 127.0.0.1, over a library of fake experts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from conftest import write_library

START_TIMEOUT_S = 60.0  # the engine trains its router at start: a few seconds on a CPU


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """``with LiveServer(tmp_path, options=..., server=...) as live:`` — ``live.url`` is its base URL."""

    def __init__(self, tmp_path: Path, *, shutdown_timeout: float = 30.0, **library: Any):
        self.folder = tmp_path / "live"
        self.folder.mkdir(exist_ok=True)
        self.library = write_library(self.folder, **library)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shutdown_timeout = shutdown_timeout
        self.log = self.folder / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LiveServer:
        env = {**os.environ, "COSERVE_CACHE": str(self.folder / "cache")}
        argv = [sys.executable, "-m", "coserve.cli", "serve", "--library", str(self.library)]
        argv += ["--port", str(self.port), "--log-level", "warning", "--shutdown-timeout", str(self.shutdown_timeout)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start within {START_TIMEOUT_S} s:\n{self.output()}")

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def terminate(self) -> None:
        """Send SIGTERM (a graceful shutdown)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the process outlives its drain deadline by 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.shutdown_timeout + 10.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10.0)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")
