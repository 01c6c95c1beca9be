"""Twice the measured capacity against the real server: only 200s and 429/503 with Retry-After."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from live import LiveServer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "load_test.py"
SLOW = {name: {"token_delay": 0.02} for name in ("small", "big", "coder")}


def load(url: str, factor: float, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, str(SCRIPT), "--url", url, "--factor", str(factor), "--measure-s", "2", *extra]
    argv += ["--duration-s", "5", "--max-requests", "400", "--timeout-s", "30"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["sent"] >= 10
    assert result["failed"] == result["timeouts"] == result["connection_errors"] == 0
    assert result["admitted"] + result["rejected"] == result["sent"]
    assert result["admitted"] > 0
    assert set(result["statuses"]) <= {"200", "429", "503"}
    return result


def test_twice_capacity(tmp_path: Path) -> None:
    with LiveServer(tmp_path, options=SLOW, server={"max_pending": 8}) as live:
        load(live.url, 2.0)
        # Fake experts sleep concurrently, so the sequential figure understates what the server
        # holds: 20x is what it takes to pass max_pending and see the 429s.
        assert load(live.url, 20.0)["rejected"] > 0


def test_capacity_is_measured_warm_right_after_a_start(tmp_path: Path) -> None:
    """A cold expert (2 s to load) would make the capacity the load's: 2x of it is one request or two."""
    cold = {name: {"token_delay": 0.02, "load_delay": 2.0} for name in ("small", "big", "coder")}
    with LiveServer(tmp_path, options=cold, server={"max_pending": 8}) as live:
        result = load(live.url, 2.0, "--warmup", "2")
    assert result["warmup_requests"] == 2 and result["warmup_first_s"] >= 2.0  # the load, paid before measuring
    assert result["capacity_rps"] > 2.0  # 8 tokens of 0.02 s: several a second, not one per load
