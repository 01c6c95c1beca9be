"""The tiered pool: DISK -> RAM -> ACTIVE, lookahead eviction, two-phase moves, backoff, prefetch."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MiB, write_library

from coserve.backends.fake import FakeBackend
from coserve.config import load_library
from coserve.engine.pool import ExpertPool
from coserve.errors import ExpertLoadError
from coserve.types import Tier


def _pool(tmp_path: Path, active: int, ram: int | None = None, **kwargs: Any) -> tuple[ExpertPool, FakeBackend]:
    library = load_library(write_library(tmp_path, **kwargs))
    backend = FakeBackend()
    pool = ExpertPool(library, {n: backend for n in library.expert_names}, active, ram_budget_bytes=ram)
    return pool, backend


def _use(pool: ExpertPool, *names: str) -> Callable[[], Any]:
    async def run() -> None:
        for name in names:
            (await pool.acquire(name)).release()
            await asyncio.sleep(0)  # let the release settle

    return run


def test_disk_to_active_goes_through_ram(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, active=60 * MiB)
    assert set(pool.residency().values()) == {Tier.DISK}
    asyncio.run(_use(pool, "coder")())
    assert backend.stages == ["coder"] and backend.loads == ["coder"]
    assert pool.residency()["coder"] is Tier.ACTIVE
    assert pool.bytes_moved == 2 * 20 * MiB  # disk -> ram, ram -> active


def test_eviction_demotes_to_ram_when_ram_has_room(tmp_path: Path) -> None:
    # active holds one of coder (20) / big (30); ram holds both.
    pool, backend = _pool(tmp_path, active=35 * MiB, ram=60 * MiB)
    asyncio.run(_use(pool, "coder", "big")())
    assert pool.residency() == {"small": Tier.DISK, "coder": Tier.RAM, "big": Tier.ACTIVE}
    asyncio.run(_use(pool, "coder")())
    assert backend.stages == ["coder", "big"]  # coder came back from RAM: no second stage
    assert pool.residency()["coder"] is Tier.ACTIVE and pool.residency()["big"] is Tier.RAM


def test_eviction_goes_to_disk_when_ram_is_full(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, active=35 * MiB, ram=35 * MiB)
    asyncio.run(_use(pool, "coder", "big")())
    assert pool.residency()["coder"] is Tier.DISK
    assert backend.unstages == ["coder"]
    assert pool.ram_bytes() <= 35 * MiB


def test_lookahead_evicts_the_expert_needed_furthest_away(tmp_path: Path) -> None:
    # small (10) + coder (20) resident in 50; big (30) needs 10 more: one victim is enough.
    pool, _ = _pool(tmp_path, active=50 * MiB)
    asyncio.run(_use(pool, "coder", "small")())  # coder is least recently used
    # coder is needed soon, small never: lookahead evicts small although coder is older.
    pool.next_use = lambda: {"coder": 1.0, "small": math.inf, "big": 0.0}
    asyncio.run(_use(pool, "big")())
    residency = pool.residency()
    assert residency["coder"] is Tier.ACTIVE and residency["big"] is Tier.ACTIVE
    assert residency["small"] is not Tier.ACTIVE


def test_without_lookahead_the_least_recently_used_goes(tmp_path: Path) -> None:
    pool, _ = _pool(tmp_path, active=50 * MiB)
    asyncio.run(_use(pool, "coder", "small", "big")())
    residency = pool.residency()
    assert residency["coder"] is not Tier.ACTIVE and residency["small"] is Tier.ACTIVE


def test_two_phase_move_keeps_victims_when_the_load_fails(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, active=35 * MiB, options={"big": {"fail_load": True}})
    asyncio.run(_use(pool, "coder")())

    async def fail() -> None:
        with pytest.raises(ExpertLoadError):
            await pool.acquire("big")

    asyncio.run(fail())
    assert pool.residency()["coder"] is Tier.ACTIVE  # the victim was never released
    assert backend.unloads == []
    assert pool.used_bytes() == 20 * MiB


def test_failed_load_puts_the_expert_in_backoff(tmp_path: Path) -> None:
    pool, _ = _pool(tmp_path, active=100 * MiB, options={"big": {"fail_load": True}})

    async def twice() -> str:
        with pytest.raises(ExpertLoadError):
            await pool.acquire("big")
        with pytest.raises(ExpertLoadError) as second:
            await pool.acquire("big")
        return second.value.code

    assert asyncio.run(twice()) == "expert_backoff"
    assert pool.state("big")["backoff_s"] > 0 and "injected" in pool.state("big")["last_error"]


def test_min_residency_protects_a_young_expert(tmp_path: Path) -> None:
    library = load_library(write_library(tmp_path))
    backend = FakeBackend()
    pool = ExpertPool(library, {n: backend for n in library.expert_names}, 35 * MiB, min_residency_s=60)
    # small (10) and coder (20) resident; big needs 30 -> at least coder must go. small is older
    # in use but both are young: young experts are evicted only when nothing else can make room.
    asyncio.run(_use(pool, "small", "coder", "big")())
    assert pool.residency()["big"] is Tier.ACTIVE
    assert pool.used_bytes() <= 35 * MiB


def test_prefetch_stages_to_ram_without_loading(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, active=60 * MiB, ram=100 * MiB)
    asyncio.run(pool.prefetch("big"))
    assert pool.residency()["big"] is Tier.RAM
    assert backend.stages == ["big"] and backend.loads == []
    asyncio.run(_use(pool, "big")())
    assert backend.stages == ["big"]  # the load found it in RAM


def test_prefetch_never_evicts_an_expert_needed_sooner(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, active=30 * MiB, ram=30 * MiB)
    asyncio.run(_use(pool, "coder")())  # coder is ACTIVE (20 of 30 RAM)
    pool.next_use = lambda: {"coder": 0.0, "big": 5.0}
    asyncio.run(pool.prefetch("big"))  # would need coder's RAM; coder is needed sooner
    assert pool.residency()["big"] is Tier.DISK and backend.stages == ["coder"]


def test_failed_stage_is_a_load_error(tmp_path: Path) -> None:
    pool, _ = _pool(tmp_path, active=60 * MiB, options={"coder": {"fail_stage": True}})

    async def go() -> None:
        with pytest.raises(ExpertLoadError):
            await pool.acquire("coder")

    asyncio.run(go())
    assert pool.residency()["coder"] is Tier.DISK and pool.ram_bytes() == 0


def test_a_just_loaded_expert_is_pinned_before_any_eviction(tmp_path: Path) -> None:
    """Regression: lookahead ranked the incoming expert as the best victim, evicted it, reloaded it..."""
    pool, backend = _pool(tmp_path, active=35 * MiB)
    asyncio.run(_use(pool, "coder")())
    pool.next_use = lambda: {"coder": 0.0, "big": math.inf}  # big is "never" needed again

    async def go() -> None:
        lease = await asyncio.wait_for(pool.acquire("big"), timeout=5)
        lease.release()

    asyncio.run(go())
    assert backend.loads == ["coder", "big"]
    assert pool.residency()["coder"] is not Tier.ACTIVE


def test_active_budget_counts_loaded_footprints_and_ram_counts_weights(tmp_path: Path) -> None:
    # Weights 10/20/30 MiB, but loaded each holds 40 MiB more (KV cache, buffers): 50/60/70 MiB.
    # An ACTIVE budget of 130 MiB holds two of them, not all three as weights alone (60) suggest.
    kv = {name: {"footprint": (size + 40) * MiB} for name, size in (("small", 10), ("coder", 20), ("big", 30))}
    pool, backend = _pool(tmp_path, active=130 * MiB, ram=60 * MiB, options=kv)
    asyncio.run(_use(pool, "small", "coder")())
    assert pool.used_bytes() == 110 * MiB
    asyncio.run(_use(pool, "big")())
    assert pool.residency() == {"small": Tier.RAM, "coder": Tier.ACTIVE, "big": Tier.ACTIVE}
    assert backend.unloads == ["small"]  # least recently used; its weights stay in RAM
    assert pool.used_bytes() == 130 * MiB
    assert pool.ram_bytes() == 60 * MiB  # RAM counts the weights of all three, nothing more
    assert (pool.state("big")["weights_bytes"], pool.state("big")["footprint_bytes"]) == (30 * MiB, 70 * MiB)


def test_expert_whose_loaded_footprint_exceeds_the_budget_is_refused(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, active=50 * MiB, options={"big": {"footprint": 51 * MiB}})
    with pytest.raises(ExpertLoadError) as info:
        asyncio.run(pool.acquire("big"))
    assert "KV cache" in info.value.message and info.value.status == 503
    assert backend.loads == []
