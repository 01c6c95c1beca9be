"""coserve.distributed.exchange_loop: the periodic exchange an ingress replica runs with a shared
deployment (the dashboard feed's and the online router's)."""

from __future__ import annotations

import asyncio

from coserve.distributed.exchange_loop import ExchangeLoop


def test_it_exchanges_until_stopped_and_a_second_start_adds_no_task() -> None:
    calls: list[int] = []

    async def exchange() -> bool:
        calls.append(len(calls))
        return True

    async def run() -> tuple[int, int]:
        loop = ExchangeLoop(exchange, every_s=0.0)
        loop.start()
        loop.start()  # no second task: the count below would double
        while len(calls) < 5:
            await asyncio.sleep(0)
        await loop.stop()
        stopped_at = len(calls)
        for _ in range(20):
            await asyncio.sleep(0)
        return stopped_at, len(calls)

    stopped_at, later = asyncio.run(run())
    assert stopped_at >= 5 and later == stopped_at  # nothing runs after stop


def test_stop_before_start_does_nothing() -> None:
    async def exchange() -> None:
        raise AssertionError("never called")

    loop = ExchangeLoop(exchange, every_s=1.0)
    asyncio.run(loop.stop())
    assert not loop.running
