"""The expert pool with the fake backend: single-flight loads, LRU eviction, pins, failed loads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import MiB, write_library

from coserve.backends.fake import FakeBackend
from coserve.config import ExpertSpec, load_library
from coserve.engine.pool import ExpertPool
from coserve.errors import ExpertLoadError
from coserve.metrics import Metrics
from coserve.types import Tier


def _pool(
    tmp_path: Path, budget: int, backend: FakeBackend | None = None, **overrides: Any
) -> tuple[ExpertPool, FakeBackend]:
    """A pool over the small library where every expert occupies 10 MiB unless overridden."""
    options = {name: {"nbytes": 10 * MiB} for name in ("small", "coder", "big")}
    for name, extra in overrides.pop("options", {}).items():
        options[name].update(extra)
    library = load_library(write_library(tmp_path, options=options, **overrides))
    backend = backend or FakeBackend()
    pool = ExpertPool(library, dict.fromkeys(library.expert_names, backend), budget, metrics=Metrics())
    return pool, backend


def _sample(pool: ExpertPool, metric: str, expert: str) -> float:
    assert pool.metrics is not None
    value = pool.metrics.registry.get_sample_value(metric, {"expert": expert})
    return value or 0.0


def test_load_on_first_use_then_hit(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=100 * MiB)

    async def scenario() -> None:
        assert pool.residency() == {"small": Tier.DISK, "coder": Tier.DISK, "big": Tier.DISK}
        assert pool.used_bytes() == 0
        lease = await pool.acquire("small")
        assert backend.loads == ["small"]
        assert lease.handle.spec.name == "small"
        assert pool.residency()["small"] is Tier.ACTIVE
        assert pool.in_flight("small") == 1
        assert pool.used_bytes() == 10 * MiB
        lease.release()
        lease.release()  # idempotent
        assert pool.in_flight("small") == 0
        again = await pool.acquire("small")
        assert backend.loads == ["small"]  # no second load
        assert again.handle is lease.handle
        again.release()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert _sample(pool, "coserve_expert_loads_total", "small") == 1
    assert _sample(pool, "coserve_expert_misses_total", "small") == 1
    assert _sample(pool, "coserve_expert_hits_total", "small") == 1
    assert pool.metrics is not None
    assert pool.metrics.registry.get_sample_value("coserve_pool_bytes", {"tier": "active"}) == 10 * MiB


def test_concurrent_acquires_share_one_load(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=100 * MiB, options={"coder": {"load_delay": 0.2}})

    async def scenario() -> None:
        leases = await asyncio.gather(*(pool.acquire("coder") for _ in range(5)))
        assert backend.loads == ["coder"]
        assert backend.max_concurrent_loads == 1
        assert len({id(lease.handle) for lease in leases}) == 1
        assert pool.in_flight("coder") == 5
        for lease in leases:
            lease.release()
        assert pool.in_flight("coder") == 0
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_different_experts_load_concurrently(tmp_path: Path) -> None:
    pool, backend = _pool(
        tmp_path, budget=100 * MiB, options={"coder": {"load_delay": 0.3}, "big": {"load_delay": 0.3}}
    )

    async def scenario() -> None:
        leases = await asyncio.gather(pool.acquire("coder"), pool.acquire("big"))
        assert sorted(backend.loads) == ["big", "coder"]
        assert backend.max_concurrent_loads == 2
        for lease in leases:
            lease.release()
        await asyncio.sleep(0)

    asyncio.run(scenario())


async def _use(pool: ExpertPool, name: str) -> None:
    lease = await pool.acquire(name)
    await asyncio.sleep(0.01)  # distinct last_used stamps
    lease.release()
    await asyncio.sleep(0.01)


def test_lru_eviction(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=25 * MiB)  # room for two of the three

    async def scenario() -> None:
        await _use(pool, "small")
        await _use(pool, "coder")
        assert backend.unloads == []
        await _use(pool, "big")
        assert backend.unloads == ["small"]
        assert pool.residency() == {"small": Tier.DISK, "coder": Tier.ACTIVE, "big": Tier.ACTIVE}
        assert pool.used_bytes() == 20 * MiB
        await _use(pool, "small")  # reloads, evicting coder (now the least recently used)
        assert backend.unloads == ["small", "coder"]
        assert backend.loads == ["small", "coder", "big", "small"]

    asyncio.run(scenario())
    assert _sample(pool, "coserve_expert_evictions_total", "small") == 1
    assert pool.metrics is not None
    tier = pool.metrics.registry.get_sample_value
    assert tier("coserve_expert_tier", {"expert": "coder", "tier": "active"}) == 0
    assert tier("coserve_expert_tier", {"expert": "coder", "tier": "disk"}) == 1
    assert tier("coserve_expert_tier", {"expert": "small", "tier": "active"}) == 1


def test_lru_counts_recent_use_not_load_order(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=25 * MiB)

    async def scenario() -> None:
        await _use(pool, "small")
        await _use(pool, "coder")
        await _use(pool, "small")  # a hit: small is now the most recently used
        await _use(pool, "big")
        assert backend.unloads == ["coder"]
        assert pool.residency() == {"small": Tier.ACTIVE, "coder": Tier.DISK, "big": Tier.ACTIVE}

    asyncio.run(scenario())


def test_eviction_frees_enough_for_a_larger_expert(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=30 * MiB, options={"big": {"nbytes": 25 * MiB}})

    async def scenario() -> None:
        await _use(pool, "small")
        await _use(pool, "coder")
        await _use(pool, "big")  # needs both evicted
        assert sorted(backend.unloads) == ["coder", "small"]
        assert pool.used_bytes() == 25 * MiB

    asyncio.run(scenario())


def test_expert_in_flight_is_never_evicted(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=15 * MiB)  # room for one expert

    async def scenario() -> None:
        lease = await pool.acquire("small")
        waiting = asyncio.create_task(pool.acquire("coder"))
        await asyncio.sleep(0.15)
        assert not waiting.done()
        assert backend.unloads == []
        assert backend.loads == ["small"]
        assert pool.residency()["small"] is Tier.ACTIVE
        lease.release()
        coder = await asyncio.wait_for(waiting, timeout=2)
        assert coder.handle.spec.name == "coder"
        assert backend.unloads == ["small"]
        assert pool.residency() == {"small": Tier.DISK, "coder": Tier.ACTIVE, "big": Tier.DISK}
        coder.release()
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_busy_expert_is_skipped_for_an_idle_one(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=25 * MiB)

    async def scenario() -> None:
        held = await pool.acquire("small")  # least recently used, but in flight
        await asyncio.sleep(0.01)
        await _use(pool, "coder")
        big = await asyncio.wait_for(pool.acquire("big"), timeout=2)
        assert backend.unloads == ["coder"]
        assert held.handle.runtime["alive"]
        held.release()
        big.release()
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_expert_larger_than_the_budget(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=15 * MiB, options={"big": {"nbytes": 16 * MiB}})

    async def scenario() -> None:
        await _use(pool, "small")
        with pytest.raises(ExpertLoadError) as info:
            await pool.acquire("big")
        assert "budget" in info.value.message
        assert info.value.status == 503
        assert pool.residency()["small"] is Tier.ACTIVE  # nothing was evicted for a hopeless load
        assert backend.unloads == []
        assert pool.used_bytes() == 10 * MiB

    asyncio.run(scenario())


def test_failed_load_reaches_every_waiter_and_spares_the_others(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=100 * MiB, options={"coder": {"fail_load": True, "load_delay": 0.2}})

    async def scenario() -> None:
        await _use(pool, "small")
        used = pool.used_bytes()
        results = await asyncio.gather(*(pool.acquire("coder") for _ in range(4)), return_exceptions=True)
        assert all(isinstance(r, ExpertLoadError) for r in results), results
        assert all("coder" in r.message for r in results if isinstance(r, ExpertLoadError))
        assert backend.max_concurrent_loads == 1  # the waiters shared the one failing load
        assert pool.used_bytes() == used
        residency = pool.residency()
        assert residency["small"] is Tier.ACTIVE
        assert residency["coder"] is not Tier.ACTIVE  # its file may stay staged in RAM, but no runtime
        assert pool.in_flight("coder") == 0
        lease = await pool.acquire("small")  # still served, without a reload
        assert backend.loads == ["small"]
        lease.release()
        with pytest.raises(ExpertLoadError) as info:  # a later request fails fast: the expert is in backoff
            await pool.acquire("coder")
        assert info.value.code == "expert_backoff"
        assert backend.max_concurrent_loads == 1
        await _use(pool, "big")  # the failed expert's bytes do not block others
        assert pool.used_bytes() == 20 * MiB

    asyncio.run(scenario())
    assert _sample(pool, "coserve_expert_load_failures_total", "coder") == 1


def test_failed_load_frees_its_reserved_room(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=25 * MiB, options={"coder": {"fail_load": True}})

    async def scenario() -> None:
        await _use(pool, "small")
        with pytest.raises(ExpertLoadError):
            await pool.acquire("coder")
        await _use(pool, "big")  # had coder's 10 MiB stayed reserved, small would have been evicted
        assert pool.used_bytes() == 20 * MiB
        assert pool.residency()["small"] is Tier.ACTIVE
        assert backend.unloads == []

    asyncio.run(scenario())


class _CrashingBackend(FakeBackend):
    """A backend whose load raises a plain exception (not a CoserveError)."""

    def load(self, spec: ExpertSpec, base: Path | None) -> Any:
        if spec.name == "big":
            raise RuntimeError("segfault in the runtime")
        return super().load(spec, base)


def test_unexpected_load_exception_becomes_expert_load_error(tmp_path: Path) -> None:
    pool, _ = _pool(tmp_path, budget=100 * MiB, backend=_CrashingBackend())

    async def scenario() -> None:
        with pytest.raises(ExpertLoadError) as info:
            await pool.acquire("big")
        assert "segfault in the runtime" in info.value.message
        assert pool.used_bytes() == 0

    asyncio.run(scenario())


def test_close_unloads_everything(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=100 * MiB)

    async def scenario() -> None:
        await _use(pool, "small")
        await _use(pool, "big")
        await pool.close()

    asyncio.run(scenario())
    assert sorted(backend.unloads) == ["big", "small"]
    assert set(pool.residency().values()) == {Tier.DISK}


def test_cancelled_loader_does_not_fail_other_waiters(tmp_path: Path) -> None:
    pool, backend = _pool(tmp_path, budget=100 * MiB, options={"big": {"load_delay": 0.2}})

    async def scenario() -> None:
        loader = asyncio.create_task(pool.acquire("big"))
        await asyncio.sleep(0.02)
        waiter = asyncio.create_task(pool.acquire("big"))
        await asyncio.sleep(0.02)
        loader.cancel()
        outcome, waited = await asyncio.wait_for(asyncio.gather(loader, waiter, return_exceptions=True), timeout=2)
        await asyncio.sleep(0.3)  # the load's worker thread has finished by now
        resident = [n for n, t in pool.residency().items() if t is Tier.ACTIVE]
        assert isinstance(outcome, asyncio.CancelledError)  # the cancelled caller sees its cancellation
        assert not isinstance(waited, BaseException), waited  # the other request still gets the expert
        waited.release()
        # every runtime the backend loaded is either resident or unloaded: none leaked
        assert sorted(backend.loads) == sorted(resident + backend.unloads)

    asyncio.run(scenario())


def test_the_engine_admits_what_each_backend_declares(tmp_path: Path, make_engine: Any) -> None:
    """The concurrency is the backend's declaration (the fake: n_parallel, default 2), not a guess."""
    pool, _ = _pool(tmp_path, budget=100 * MiB, options={"coder": {"n_parallel": 5}})
    assert [pool.concurrency(name) for name in ("small", "coder", "big")] == [2, 5, 2]
    engine = make_engine(options={"big": {"n_parallel": 3}})
    assert [engine.slots(name) for name in ("small", "coder", "big")] == [2, 2, 3]


def test_victims_go_furthest_next_use_first_then_least_recent_and_young_ones_last() -> None:
    from coserve.engine.residency import Candidate, choose_victims

    candidates = {
        "needed_soon": Candidate(freed=10, last_used=5.0, active_since=0.0),
        "unneeded_recent": Candidate(freed=10, last_used=9.0, active_since=0.0),
        "unneeded_old": Candidate(freed=10, last_used=1.0, active_since=0.0),
        "just_loaded": Candidate(freed=10, last_used=0.0, active_since=99.0),
    }
    next_use = {"needed_soon": 1.0}
    choose = choose_victims
    assert choose(candidates, need=10, free=0, next_use=next_use, now=100.0, min_residency_s=5.0) == ["unneeded_old"]
    assert choose(candidates, need=20, free=0, next_use=next_use, now=100.0, min_residency_s=5.0) == [
        "unneeded_old",
        "unneeded_recent",
    ]
    assert choose(candidates, need=40, free=0, next_use=next_use, now=100.0, min_residency_s=5.0) == [
        "unneeded_old",
        "unneeded_recent",
        "needed_soon",
        "just_loaded",
    ]
    assert choose(candidates, need=50, free=0, next_use=next_use, now=100.0, min_residency_s=5.0) is None
    assert choose(candidates, need=10, free=10, next_use=next_use, now=100.0, min_residency_s=5.0) == []


def test_unpinning_wakes_a_load_waiting_for_room(tmp_path: Path) -> None:
    """Found by tests/test_pool_machine.py: a load waiting for room that only a pinned, idle expert
    held waited on after the pin was lifted, until some unrelated release happened to wake it."""
    pool, backend = _pool(tmp_path, budget=25 * MiB, options={"coder": {"nbytes": 20 * MiB}})

    async def scenario() -> None:
        pool.pin("coder")
        await _use(pool, "coder")  # loaded and idle, but pinned: never a victim
        waiting = asyncio.create_task(pool.acquire("small"))  # 10 MiB more does not fit beside it
        await asyncio.sleep(0.05)
        assert not waiting.done()
        pool.pin("coder", False)  # now coder may be evicted: the waiting load must go ahead
        lease = await asyncio.wait_for(waiting, timeout=2)
        assert backend.unloads == ["coder"] and pool.residency()["small"] is Tier.ACTIVE
        lease.release()
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_a_failed_load_leaves_the_ram_tier_within_its_budget(tmp_path: Path) -> None:
    """Found by tests/test_pool_machine.py: the failed expert's file, staged for the load, stayed in
    RAM though the RAM tier was then over its budget, until some other move fitted the tiers."""
    pool, backend = _pool(tmp_path, budget=100 * MiB, options={"coder": {"fail_load": True}})
    pool.ram_budget_bytes = 15 * MiB

    async def scenario() -> None:
        await _use(pool, "small")  # 10 MiB in RAM (and ACTIVE)
        with pytest.raises(ExpertLoadError):
            await pool.acquire("coder")  # staged (10 + 10 MiB), then its load fails
        await asyncio.sleep(0.05)
        assert pool.ram_bytes() <= pool.ram_budget_bytes
        assert backend.unstages == ["coder"]
        assert pool.residency()["small"] is Tier.ACTIVE  # the loaded expert is not what gave way

    asyncio.run(scenario())


def test_an_evicted_expert_drops_to_disk_when_ram_is_over_its_budget(tmp_path: Path) -> None:
    """Found by tests/test_pool_machine.py: an evicted expert dropped to RAM whenever unstaging it
    alone could not bring the RAM tier within its budget (the loaded experts' weights filled it),
    though it "drops to RAM when the RAM budget allows" only."""
    pool, backend = _pool(tmp_path, budget=20 * MiB)  # two of the three loaded at a time
    pool.ram_budget_bytes = 15 * MiB  # less than the loaded experts' weights

    async def scenario() -> None:
        await _use(pool, "small")
        await _use(pool, "coder")
        await _use(pool, "big")  # evicts small, the least recently used
        assert pool.residency() == {"small": Tier.DISK, "coder": Tier.ACTIVE, "big": Tier.ACTIVE}
        assert backend.unstages == ["small"]

    asyncio.run(scenario())


def test_an_expert_its_requests_wait_to_pin_is_no_victim(tmp_path: Path) -> None:
    """Found by tests/test_pool_machine.py: when a load ended, another expert's waiting load could
    count the freshly loaded expert as an idle victim before its own waiters pinned it, and so
    started a load that had to go over the ACTIVE budget for as long as those requests ran."""
    pool, backend = _pool(
        tmp_path, budget=25 * MiB, options={"coder": {"nbytes": 20 * MiB}, "small": {"load_delay": 0.2}}
    )

    async def scenario() -> None:
        smalls = [asyncio.create_task(pool.acquire("small")) for _ in range(3)]
        await asyncio.sleep(0.05)  # small is loading; coder (20 MiB) does not fit beside it (10 MiB)
        coder = asyncio.create_task(pool.acquire("coder"))
        leases = await asyncio.wait_for(asyncio.gather(*smalls), 2)
        await asyncio.sleep(0.1)
        assert backend.loads == ["small"] and not coder.done()  # coder waits for small's requests
        assert pool.used_bytes() <= pool.budget_bytes
        for lease in leases:
            lease.release()
        (await asyncio.wait_for(coder, 2)).release()
        assert backend.loads == ["small", "coder"] and backend.unloads == ["small"]

    asyncio.run(scenario())


def test_a_pin_keeps_an_expert_active_not_its_file_in_ram(tmp_path: Path) -> None:
    """Found by tests/test_pool_machine.py: a pinned expert not loaded yet (only staged) kept the RAM
    tier over its budget, though a pin keeps an expert out of evictions "once ACTIVE"."""
    pool, backend = _pool(tmp_path, budget=100 * MiB)
    pool.ram_budget_bytes = 15 * MiB

    async def scenario() -> None:
        await pool.prefetch("coder")  # staged: 10 MiB of 15
        pool.pin("coder")  # to be loaded later (as a cluster's resident replica is)
        await _use(pool, "small")  # 10 MiB more in RAM: coder's file gives way
        assert pool.ram_bytes() <= pool.ram_budget_bytes
        assert pool.residency() == {"small": Tier.ACTIVE, "coder": Tier.DISK, "big": Tier.DISK}
        lease = await pool.acquire("coder")  # the pin holds once it is loaded
        lease.release()
        await asyncio.sleep(0.05)
        assert pool.residency()["coder"] is Tier.ACTIVE and backend.unloads == []

    asyncio.run(scenario())


def _hit_on_a_victim(tmp_path: Path, leave: bool) -> list[str]:
    """small (10 MiB) and coder (20 MiB) loaded and idle, 35 MiB of ACTIVE: big (30 MiB) is loaded with
    both as victims, but a request for coder arrives during the load (a hit: coder stays, busy);
    ``leave``: big's caller goes away before its load ends. Returns the evictions while coder runs."""
    options = {"coder": {"nbytes": 20 * MiB}, "big": {"nbytes": 30 * MiB, "load_delay": 0.2}}
    pool, backend = _pool(tmp_path, budget=35 * MiB, options=options)
    evicted: list[str] = []

    async def scenario() -> None:
        await _use(pool, "small")
        await _use(pool, "coder")
        big = asyncio.create_task(pool.acquire("big"))
        await asyncio.sleep(0.05)
        coder = await pool.acquire("coder")
        if leave:
            big.cancel()
        await asyncio.sleep(0.3)  # big's load has ended
        assert pool.residency()["coder"] is Tier.ACTIVE and coder.handle.runtime["alive"]
        evicted.extend(backend.unloads)
        if not leave:
            (await big).release()
        coder.release()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    return evicted


def test_an_overshoot_evicts_the_idle_experts_it_can(tmp_path: Path) -> None:
    """Found by tests/test_pool_machine.py: a load that ended over the ACTIVE budget (a victim it
    counted on became busy) evicted no idle expert at all unless evicting them fitted the budget."""
    assert _hit_on_a_victim(tmp_path, leave=False) == ["small"]  # as far as idle experts help


def test_a_load_whose_callers_left_does_not_keep_the_tier_over_budget(tmp_path: Path) -> None:
    """Found by tests/test_pool_machine.py: a freshly loaded expert was kept though every request
    waiting for it had gone, holding the ACTIVE tier over its budget while another expert ran."""
    assert sorted(_hit_on_a_victim(tmp_path, leave=True)) == ["big", "small"]  # the tier fits around coder
