"""The shared API-key counters survive the ``quota`` replica's restart (coserve.distributed.quota_state),
without Ray: the counters are carried to another process with the time that passed; writes are
coalesced; a restarted QuotaService over the same store continues every key's limits; unreadable
saved state starts every key from zero with a warning. The store is a dict; the real one (Ray's GCS
key-value store) is tested in tests/test_ray_state.py."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from test_cluster_state import BUDGETED, FREE, LIMITED, _keys_library
from test_controller_state import BrokenStore, MemoryStore

from coserve.config import ApiKey
from coserve.distributed.quota_state import QuotaKeeper
from coserve.distributed.shared_quota import QuotaService
from coserve.errors import TooManyRequests
from coserve.server.auth import hash_key
from coserve.server.quota import DAY_S, Quota

RATED, BUDGET = hash_key(LIMITED), hash_key(BUDGETED)  # 3 requests a minute; 100 tokens a day


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counters_carry_on_in_another_process_with_the_time_that_passed() -> None:
    key = ApiKey(sha256="a" * 64, requests_per_minute=6, tokens_per_day=100)  # one request back every 10 s
    wall = Clock(5 * DAY_S + 100.0)
    first = Quota([key], clock=Clock(7.0), wall=wall)
    for _ in range(4):
        first.check(key.sha256, chat=True)
    first.spend(key.sha256, 30)
    saved = first.counters()
    assert saved == {key.sha256: {"requests_left": 2.0, "at": wall.now, "day": 5, "tokens_used": 30}}

    wall.now += 10.0  # the other process reads them 10 s later, with its own monotonic clock
    second = Quota([key], clock=Clock(900.0), wall=wall)
    assert second.carry_on(json.loads(json.dumps(saved))) == 1
    for _ in range(3):  # 2 left + 1 refilled in the 10 s
        second.check(key.sha256, chat=True)
    with pytest.raises(TooManyRequests) as refused:
        second.check(key.sha256, chat=True)
    assert refused.value.code == "rate_limited"
    assert second.used(key.sha256) == 30
    second.spend(key.sha256, 70)
    with pytest.raises(TooManyRequests) as spent:
        second.check(key.sha256, chat=True)
    assert spent.value.code == "token_budget_exceeded"


def test_carry_on_caps_at_the_limit_ignores_unknown_keys_and_rejects_malformed_counters() -> None:
    key = ApiKey(sha256="a" * 64, requests_per_minute=2)
    quota = Quota([key], clock=Clock(0.0), wall=Clock(1000.0))
    assert quota.carry_on({"other": {"requests_left": 0.0, "at": 1000.0}}) == 0
    assert quota.carry_on({key.sha256: {"requests_left": 0.5, "at": 0.0}}) == 1  # 1000 s ago: full again
    assert quota.counters()[key.sha256]["requests_left"] == 2.0
    quota.check(key.sha256, chat=False)
    nan = float("nan")
    malformed = ({"requests_left": "many", "at": 1.0}, {"requests_left": nan, "at": 1.0}, {"requests_left": 1.0})
    for bad in malformed:  # not a number; not finite; no time it was read
        with pytest.raises(ValueError):
            quota.carry_on({key.sha256: bad})
    assert quota.counters()[key.sha256]["requests_left"] == 1.0  # unchanged by the malformed ones


def test_many_changes_are_one_write_and_a_restarted_service_continues_every_keys_limits(tmp_path: Path) -> None:
    library, store = str(_keys_library(tmp_path)), MemoryStore()

    async def before_the_crash() -> None:
        service = QuotaService(library, store=store)
        assert service.keeper is not None
        for _ in range(3):
            assert await service.take(RATED, True) is None
        await service.spend({BUDGET: 60})
        await service.spend({BUDGET: 40})
        assert store.puts == 0  # coalesced: not written yet
        writer = service.keeper._writer
        assert writer is not None
        await writer  # one write of all five changes, then the writer stops
        assert store.puts == 1
        service.keeper = None  # the replica dies: nothing written at stop

    asyncio.run(before_the_crash())
    saved = json.loads(store.value or b"")["keys"]
    assert saved[BUDGET]["tokens_used"] == 100 and saved[RATED]["requests_left"] < 1.0

    async def after_the_restart() -> None:
        service = QuotaService(library, store=store)
        assert service.keeper is not None and service.keeper.resume().startswith("resumed the counters of 2")
        refused = await service.take(RATED, True)
        assert refused is not None and refused["code"] == "rate_limited"  # 3 a minute, not 3 more
        spent = await service.take(BUDGET, True)
        assert spent is not None and spent["code"] == "token_budget_exceeded"
        assert await service.used(BUDGET) == 100
        assert await service.take(hash_key(FREE), True) is None

    asyncio.run(after_the_restart())


def test_a_stopping_replica_writes_its_last_changes(tmp_path: Path) -> None:
    library, store = str(_keys_library(tmp_path)), MemoryStore()

    async def run() -> None:
        service = QuotaService(library, store=store)
        assert service.keeper is not None
        service.keeper.every_s = 3600.0  # the coalesced write would come far later
        await service.spend({BUDGET: 100})
        service.__del__()  # what Ray Serve calls when it stops the replica
        assert store.puts == 1

    asyncio.run(run())
    assert asyncio.run(QuotaService(library, store=store).used(BUDGET)) == 100


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xffnot json",
        b"[1, 2]",
        b'{"format": 2, "keys": {}}',
        b'{"format": 1, "keys": {"@rated": 3}}',
        b'{"format": 1, "keys": {"@rated": {"requests_left": "NaN", "at": 1.0}}}',
        b'{"format": 1, "keys": {"@budget": {"day": "today", "tokens_used": 5}}}',
    ],
)
def test_unreadable_saved_counters_start_every_key_from_zero_with_a_warning(
    raw: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = raw.replace(b"@rated", RATED.encode()).replace(b"@budget", BUDGET.encode())
    with caplog.at_level(logging.WARNING, logger="coserve.distributed"):
        service = QuotaService(str(_keys_library(tmp_path)), store=MemoryStore(raw))
    assert any("quota counters not resumed" in r.getMessage() for r in caplog.records)

    async def run() -> None:
        assert [await service.take(RATED, True) for _ in range(3)] == [None] * 3  # a full bucket
        assert await service.used(BUDGET) == 0

    asyncio.run(run())


def test_a_store_that_does_not_take_the_counters_warns_and_tries_again(caplog: pytest.LogCaptureFixture) -> None:
    quota = Quota([ApiKey(sha256="a" * 64, tokens_per_day=10)])
    keeper = QuotaKeeper(quota, BrokenStore())

    async def run() -> None:
        keeper.changed()
        assert await keeper.save() is False

    with caplog.at_level(logging.WARNING, logger="coserve.distributed"):
        asyncio.run(run())
    assert keeper.changed_since_save and keeper.saves == 0  # written again a period later
    assert any("quota counters not saved" in r.getMessage() for r in caplog.records)


def test_a_write_in_flight_never_lands_after_a_newer_one() -> None:
    store = MemoryStore()
    quota = Quota([ApiKey(sha256="a" * 64, tokens_per_day=10)])
    keeper = QuotaKeeper(quota, store)
    older = keeper._snapshot()  # taken by the coalesced writer, its write still on its way
    quota.spend("a" * 64, 7)
    keeper._put(*keeper._snapshot())  # the stop's write of the newer counters lands first
    keeper._put(*older)  # the older one arrives late: not written over the newer
    assert json.loads(store.value or b"")["keys"]["a" * 64]["tokens_used"] == 7
    assert store.puts == 1 and keeper.saves == 1
