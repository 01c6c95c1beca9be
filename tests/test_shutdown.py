"""Graceful shutdown of the real server: SIGTERM drains in-flight streams, refuses new work, exits 0."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
from conftest import HELD_OUT
from live import LiveServer

URL = "/v1/chat/completions"
SLOW = {name: {"token_delay": 0.05} for name in ("small", "big", "coder")}
BODY = {"model": "coserve", "messages": [{"role": "user", "content": HELD_OUT["chat"]}], "stream": True}


def stream_lines(url: str, max_tokens: int, started: threading.Event, lines: list[str]) -> None:
    """Read one streamed answer's SSE lines into ``lines``; a broken stream ends them with ``error: ...``."""
    try:
        with httpx.Client(timeout=30.0) as client:
            with client.stream("POST", url + URL, json={**BODY, "max_tokens": max_tokens}) as response:
                lines.append(f"status: {response.status_code}")
                for line in response.iter_lines():
                    if line:
                        lines.append(line)
                        started.set()
    except httpx.TransportError as exc:
        lines.append(f"error: {exc!r}")


def test_sigterm_drains_in_flight_streams(tmp_path: Path) -> None:
    with LiveServer(tmp_path, options=SLOW, shutdown_timeout=10.0) as live:
        started, lines = threading.Event(), []
        reader = threading.Thread(target=stream_lines, args=(live.url, 40, started, lines))  # ~2 s of tokens
        reader.start()
        assert started.wait(20.0), live.output()
        sent = time.monotonic()
        live.terminate()
        time.sleep(0.5)
        try:  # a new request once draining began: refused (503 or no connection), never served
            refused = httpx.post(live.url + URL, json={**BODY, "stream": False}, timeout=5.0).status_code
        except httpx.TransportError:
            refused = 0
        assert refused in (0, 503)
        reader.join(20.0)
        assert not reader.is_alive()
        assert lines[0] == "status: 200" and lines[-1] == "data: [DONE]", lines[-3:]
        finish = json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"]
        assert finish in ("stop", "length")
        assert live.proc is not None
        assert live.proc.wait(timeout=15.0) == 0, live.output()
        assert time.monotonic() - sent < 10.0 + 5.0


def queued_answer(url: str, answers: list[httpx.Response | str]) -> None:
    """Send one non-streamed request and keep its response (or the transport error's repr)."""
    try:
        answers.append(httpx.post(url + URL, json={**BODY, "stream": False, "max_tokens": 4}, timeout=30.0))
    except httpx.TransportError as exc:
        answers.append(repr(exc))


ONE_SLOT = {name: {**SLOW[name], "n_parallel": 1} for name in SLOW}  # a second request queues


def stream_and_queue(live: LiveServer) -> tuple[list[str], list[httpx.Response | str], list[threading.Thread]]:
    """A long stream (~20 s) that has begun, and a request queued behind it: their lines, the
    queued one's answer, and the two client threads."""
    started, lines = threading.Event(), []
    reader = threading.Thread(target=stream_lines, args=(live.url, 400, started, lines), daemon=True)
    reader.start()
    assert started.wait(20.0), live.output()
    answers: list[httpx.Response | str] = []
    waiting = threading.Thread(target=queued_answer, args=(live.url, answers), daemon=True)
    waiting.start()
    time.sleep(0.5)  # queued behind the stream
    return lines, answers, [reader, waiting]


def test_drain_deadline_cuts_long_streams(tmp_path: Path) -> None:
    with LiveServer(tmp_path, options=ONE_SLOT, shutdown_timeout=1.0) as live:
        lines, answers, clients = stream_and_queue(live)
        sent = time.monotonic()
        live.terminate()
        assert live.proc is not None
        assert live.proc.wait(timeout=15.0) == 0, live.output()
        assert time.monotonic() - sent < 1.0 + 5.0
        for client in clients:
            client.join(10.0)
        assert lines[0] == "status: 200"
        assert "data: [DONE]" not in lines and lines[-1].startswith("error:")  # cut at the deadline
        # the queued request is told to go elsewhere, as a new one would be (not uvicorn's bare 500)
        assert isinstance(answers[0], httpx.Response), answers
        assert answers[0].status_code == 503 and answers[0].headers["retry-after"] == "5"
        assert answers[0].json()["error"]["code"] == "draining"
        # both are in the decision log, as cut (503), not lost with the process's end
        answer = json.loads(next(line for line in lines if line.startswith("data: ")).removeprefix("data: "))
        with sqlite3.connect(live.folder / "cache" / "decisions.sqlite") as db:
            logged = db.execute("SELECT id, status FROM decisions ORDER BY time").fetchall()
        assert logged[0] == (answer["id"], "503") and [status for _, status in logged] == ["503", "503"], live.output()


def test_a_second_ctrl_c_cuts_the_drain_at_once_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C drains as SIGTERM does; a second one cuts what is running now: one line, no
    traceback, exit 130, and the decision log closed cleanly with the cut requests' rows."""
    with LiveServer(tmp_path, options=ONE_SLOT, shutdown_timeout=30.0) as live:
        lines, answers, clients = stream_and_queue(live)
        assert live.proc is not None
        live.proc.send_signal(signal.SIGINT)
        time.sleep(1.0)  # draining: the stream runs on
        assert live.proc.poll() is None and not lines[-1].startswith("error:")
        sent = time.monotonic()
        live.proc.send_signal(signal.SIGINT)
        assert live.proc.wait(timeout=10.0) == 130, live.output()
        assert time.monotonic() - sent < 5.0
        for client in clients:
            client.join(10.0)
        output = live.output()
        assert "Traceback" not in output and "CancelledError" not in output, output
        assert "coserve: second interrupt: cutting 2 running request(s)" in output, output
        assert "data: [DONE]" not in lines
        assert isinstance(answers[0], httpx.Response) and answers[0].status_code == 503, answers
        answer = json.loads(next(line for line in lines if line.startswith("data: ")).removeprefix("data: "))
        with sqlite3.connect(live.folder / "cache" / "decisions.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            logged = db.execute("SELECT id, status FROM decisions ORDER BY time").fetchall()
        assert logged[0] == (answer["id"], "503") and [status for _, status in logged] == ["503", "503"], output
