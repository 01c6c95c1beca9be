"""Closing the expert pool while work is still in progress (shutdown past the drain deadline).

Found by tests/test_engine_machine.py: ``close()`` unloaded every expert at once, a runtime with a
generation still running in its worker thread included (a llama.cpp context freed under a decode),
and a load or a staging that finished after it left its runtime or staged file behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import MiB, write_library

from coserve.backends.fake import FakeBackend
from coserve.config import ExpertSpec, load_library
from coserve.engine.pool import ExpertPool
from coserve.errors import ExpertLoadError
from coserve.types import Tier


class _SlowStaging(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.staging = 0  # stagings started in a worker thread

    def stage(self, spec: ExpertSpec, base: Path | None) -> Any:
        self.staging += 1
        time.sleep(0.2)
        return super().stage(spec, base)


async def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until ``check()`` holds (worker threads end when the machine lets them; never a fixed pause)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def _close_during(
    pool: ExpertPool, work: Coroutine[Any, Any, Any], started: Callable[[], bool]
) -> asyncio.Task[Any]:
    """Start ``work``, wait until its move runs in its worker thread, close the pool; the work's task."""
    task = asyncio.create_task(work)
    await _eventually(started)
    await pool.close()
    return task


def _pool(tmp_path: Path, backend: FakeBackend) -> ExpertPool:
    options = {name: {"nbytes": 10 * MiB, "load_delay": 0.2} for name in ("small", "coder", "big")}
    library = load_library(write_library(tmp_path, options=options))
    return ExpertPool(library, dict.fromkeys(library.expert_names, backend), 100 * MiB)


def test_close_leaves_a_busy_runtime_alive_until_its_work_ends(tmp_path: Path) -> None:
    backend = FakeBackend()
    pool = _pool(tmp_path, backend)

    async def scenario() -> None:
        lease = await pool.acquire("small")  # a generation still running in its thread
        await pool.close()
        assert lease.handle.runtime["alive"], "closed under a running generation"
        lease.release()  # the generation returned
        await _eventually(lambda: not lease.handle.runtime["alive"])
        assert backend.unloads == ["small"]
        assert set(pool.residency().values()) == {Tier.DISK}

    asyncio.run(scenario())


def test_a_load_that_ends_after_close_is_undone(tmp_path: Path) -> None:
    backend = FakeBackend()
    pool = _pool(tmp_path, backend)

    async def scenario() -> None:
        loading = await _close_during(pool, pool.acquire("big"), lambda: backend.active_loads == 1)
        with pytest.raises(ExpertLoadError):
            await asyncio.wait_for(loading, 10)
        await _eventually(lambda: backend.unstages == ["big"])
        assert backend.loads == ["big"] and backend.unloads == ["big"] and backend.unstages == ["big"]
        assert set(pool.residency().values()) == {Tier.DISK}
        with pytest.raises(ExpertLoadError):
            await pool.acquire("small")  # nothing new is loaded by a closed pool

    asyncio.run(scenario())


def test_a_staging_that_ends_after_close_is_undone(tmp_path: Path) -> None:
    backend = _SlowStaging()
    pool = _pool(tmp_path, backend)

    async def scenario() -> None:
        prefetch = await _close_during(pool, pool.prefetch("coder"), lambda: backend.staging == 1)
        await asyncio.wait_for(prefetch, 10)
        assert backend.stages == ["coder"] and backend.unstages == ["coder"]
        assert pool.residency()["coder"] is Tier.DISK

    asyncio.run(scenario())
