"""A real ``coserve serve`` in a subprocess on 127.0.0.1: over a library of fake experts (the
default), a library file given, or the bundled default library; or an engine's app on a real
uvicorn server in a thread (``app_in_thread``). Every test that needs a free port or a live server
uses this module (the port and the wait come from ``coserve.bench.processes``,
which the serve benchmark uses too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from conftest import write_library

from coserve.bench.processes import free_port, wait_until_up

__all__ = ["LiveServer", "app_in_thread", "free_port"]

START_TIMEOUT_S = 60.0  # the engine trains its router at start: a few seconds on a CPU


class LiveServer:
    """``with LiveServer(tmp_path, options=..., server=...) as live:`` — ``live.url`` is its base URL.

    ``library``: serve this file instead of writing the fake library (``write_library`` overrides
    are then not allowed); ``bundled=True``: the default library of real experts."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        library: Path | None = None,
        bundled: bool = False,
        shutdown_timeout: float = 30.0,
        start_timeout: float = START_TIMEOUT_S,
        **overrides: Any,
    ):
        self.folder = tmp_path / "live"
        self.folder.mkdir(exist_ok=True)
        if (library is not None or bundled) and overrides:
            raise TypeError("write_library overrides apply to the fake library only")
        self.library = None if bundled else library or write_library(self.folder, **overrides)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shutdown_timeout = shutdown_timeout
        self.start_timeout = start_timeout
        self.log = self.folder / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LiveServer:
        env = {**os.environ, "COSERVE_CACHE": str(self.folder / "cache"), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "coserve.cli", "serve"]
        argv += ["--library", str(self.library)] if self.library is not None else []
        argv += ["--port", str(self.port), "--log-level", "warning", "--shutdown-timeout", str(self.shutdown_timeout)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until_up(f"{self.url}/health", self.proc, self.start_timeout, ok_below=201)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}:\n{self.output()}") from None
        return self

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


@contextmanager
def app_in_thread(engine: Any) -> Iterator[str]:
    """``create_app(engine)`` on a real uvicorn server in a thread on 127.0.0.1 (a free port); yields
    its ``/v1`` base URL and stops the server on leaving."""
    import uvicorn

    from coserve.server.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline, "the in-thread server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
