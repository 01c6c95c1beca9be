"""The engine's dispatcher: batching by expert, policies, cancellation while queued."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from coserve.backends.fake import FakeBackend
from coserve.engine.call import Call
from coserve.engine.engine import Engine
from coserve.types import Message, Request, Sampling, Tier

PROMPTS = {"small": "hello friend", "coder": "write python code", "big": "solve the equation"}


def _request(expert: str) -> Request:
    return Request((Message("user", PROMPTS[expert]),), expert, Sampling(max_tokens=4))


async def _answer(engine: Engine, request: Request) -> str:
    """Route and complete one request; the expert that answered."""
    call = Call(request)
    await engine.route(call)
    await engine.complete(call)
    assert call.expert is not None and call.status == "running" and call.usage is not None
    return call.expert


async def _serve(engine: Engine, experts: list[str]) -> list[str]:
    async def one(expert: str) -> str:
        return await _answer(engine, _request(expert))

    try:
        return list(await asyncio.gather(*(one(e) for e in experts)))
    finally:
        await engine.close()


def _backend(engine: Engine) -> FakeBackend:
    backend = engine.pool.backends["small"]
    assert isinstance(backend, FakeBackend)
    return backend


INTERLEAVED = ["small", "coder", "big"] * 4
SLOW = {name: {"token_delay": 0.01, "n_parallel": 2} for name in PROMPTS}


def test_lookahead_batches_by_expert(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options=SLOW)
    answered = asyncio.run(_serve(engine, INTERLEAVED))
    assert answered == INTERLEAVED
    # 12 requests for 3 experts arriving interleaved: served as 3 groups, not 12 turns.
    assert engine.switches == 3


def test_lru_serves_in_arrival_order_and_switches_more(make_engine: Callable[..., Engine]) -> None:
    lookahead = make_engine(options=SLOW)
    asyncio.run(_serve(lookahead, INTERLEAVED))
    lru = make_engine(options=SLOW)
    lru_engine = Engine(lru.library, lru.router, lru.pool, lru.metrics, lru.executor, residency="lru")
    asyncio.run(_serve(lru_engine, INTERLEAVED))
    assert lru_engine.switches > lookahead.switches


def test_load_per_request_unloads_after_each_request(make_engine: Callable[..., Engine]) -> None:
    built = make_engine()
    engine = Engine(
        built.library, built.router, built.pool, built.metrics, built.executor, residency="load_per_request"
    )

    async def run() -> None:
        for expert in ["small", "small", "coder"]:
            request = _request(expert)
            await _answer(engine, request)
            await asyncio.sleep(0.05)  # let the eviction settle
            assert engine.pool.residency()[expert] is Tier.DISK
        await engine.close()

    asyncio.run(run())
    assert _backend(engine).loads == ["small", "small", "coder"]


def test_slots_bound_concurrency_per_expert(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"small": {"token_delay": 0.02, "n_parallel": 2}})
    peak = 0

    async def run() -> None:
        nonlocal peak

        async def watch() -> None:
            nonlocal peak
            for _ in range(100):
                peak = max(peak, engine.pool.in_flight("small"))
                await asyncio.sleep(0.005)

        watcher = asyncio.get_running_loop().create_task(watch())
        await _serve(engine, ["small"] * 6)
        watcher.cancel()

    asyncio.run(run())
    assert peak == 2


def test_request_cancelled_while_queued_never_runs(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(options={"small": {"token_delay": 0.05, "n_parallel": 1}})
    ran: list[Any] = []

    async def run() -> None:
        task1 = asyncio.get_running_loop().create_task(_answer(engine, _request("small")))
        await asyncio.sleep(0.02)
        task2 = asyncio.get_running_loop().create_task(_answer(engine, _request("small")))
        await asyncio.sleep(0.02)
        assert engine.scheduler.depth() == {"small": 1}
        task2.cancel()
        await task1
        await asyncio.sleep(0.05)
        ran.append(task2.cancelled())
        await engine.close()

    asyncio.run(run())
    assert ran == [True]
    assert engine.pool.in_flight("small") == 0


def test_an_unexpected_staging_error_fails_the_whole_batch_not_the_dispatcher(
    make_engine: Callable[..., Engine],
) -> None:
    # fail_measure makes the fake backend raise RuntimeError while the pool measures the expert.
    engine = make_engine(options={"coder": {"fail_measure": True, "n_parallel": 3}})

    async def run() -> list[str]:
        async def one(expert: str) -> str:
            try:
                return await _answer(engine, _request(expert))
            except Exception as exc:  # the pinned coder requests have no alternative
                return type(exc).__name__

        try:
            return list(await asyncio.wait_for(asyncio.gather(*(one(e) for e in ["coder"] * 5 + ["small"])), 5))
        finally:
            await engine.close()

    results = asyncio.run(run())
    assert results == ["ExpertLoadError"] * 5 + ["small"]


def test_an_engine_serves_across_event_loops(make_engine: Callable[..., Engine]) -> None:
    """`asyncio.run` twice with one engine (scripts, notebooks): the second run must not hang."""
    engine = make_engine()

    async def once() -> str:
        return await asyncio.wait_for(_answer(engine, _request("small")), 5)

    assert asyncio.run(once()) == "small"
    assert asyncio.run(once()) == "small"
    asyncio.run(engine.close())


def _count(engine: Engine, metric: str, expert: str) -> float:
    return engine.metrics.registry.get_sample_value(f"coserve_expert_{metric}_total", {"expert": expert}) or 0.0


async def _switch(engine: Engine, first: str, then: str) -> None:
    """Two requests for ``first``; once they run, one for ``then`` (a switch while ``first`` drains)."""

    async def one(expert: str) -> None:
        await _answer(engine, _request(expert))

    running = [asyncio.create_task(one(first)) for _ in range(2)]
    while engine.pool.in_flight(first) < 2:
        await asyncio.sleep(0.005)
    await one(then)
    await asyncio.gather(*running)
    await engine.close()


def _watch(engine: Engine, busy_expert: str) -> dict[str, int]:
    """Records, per backend move, how many requests ``busy_expert`` had in flight when it began."""
    backend = _backend(engine)
    busy: dict[str, int] = {}
    stage, load = backend.stage, backend.load

    def watched_stage(spec: Any, base: Any) -> Any:
        busy.setdefault(f"stage {spec.name}", engine.pool.in_flight(busy_expert))
        return stage(spec, base)

    def watched_load(spec: Any, base: Any) -> Any:
        busy.setdefault(f"load {spec.name}", engine.pool.in_flight(busy_expert))
        return load(spec, base)

    backend.stage, backend.load = watched_stage, watched_load  # type: ignore[method-assign]
    return busy


def test_next_expert_is_loaded_while_the_running_one_drains_when_both_fit(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine(options={"small": {"token_delay": 0.05, "n_parallel": 2}})  # ACTIVE holds all three
    busy = _watch(engine, "small")
    asyncio.run(_switch(engine, "small", "coder"))
    assert busy["load coder"] > 0  # loaded while small's requests were still running
    assert _count(engine, "preloads", "coder") == 1
    assert _count(engine, "misses", "coder") == 0 and _count(engine, "hits", "coder") == 1
    assert _count(engine, "evictions", "small") == 0  # nothing was evicted for it


def test_next_expert_waits_for_the_drain_when_it_does_not_fit_beside_the_running_one(
    make_engine: Callable[..., Engine],
) -> None:
    options = {"small": {"token_delay": 0.05, "n_parallel": 2}}
    engine = make_engine(options=options, memory={"ram": "1GiB", "active": "35MiB"})  # small 10 + big 30 > 35
    busy = _watch(engine, "small")
    asyncio.run(_switch(engine, "small", "big"))
    assert busy["stage big"] > 0  # its file was brought into RAM while small ran
    assert busy["load big"] == 0  # but it was loaded only once small had no work left
    assert _backend(engine).unloads[0] == "small"  # (close() unloads big afterwards)


def _overloaded(make_engine: Callable[..., Engine], residency: str) -> Engine:
    """Room in ACTIVE for one expert only, one slot each, and a wait bound every queued request
    has passed (what an overload looks like: the backlog is older than ``max_wait_s``)."""
    built = make_engine(
        options={"small": {"n_parallel": 1}, "coder": {"n_parallel": 1}},
        memory={"ram": "1GiB", "active": "25MiB", "max_wait_s": 1e-9},  # small 10 MiB, coder 20 MiB
    )
    return Engine(built.library, built.router, built.pool, built.metrics, built.executor, residency=residency)  # type: ignore[arg-type]


def test_lookahead_keeps_batching_when_every_request_is_past_the_wait_bound(
    make_engine: Callable[..., Engine],
) -> None:
    """Six requests queued at once, alternating small/coder. By hand: lookahead serves small's turn
    (the three small requests queued when it started), then coder's: 2 switches, 2 loads. LRU serves
    in arrival order with room for one expert: small, coder, small, coder, small, coder: 6 switches,
    6 loads. (Before turns, aging made lookahead do what LRU does as soon as the backlog was older
    than the wait bound.)"""
    alternating = ["small", "coder"] * 3
    lookahead = _overloaded(make_engine, "lookahead")
    assert asyncio.run(_serve(lookahead, alternating)) == alternating
    assert (lookahead.switches, _backend(lookahead).loads) == (2, ["small", "coder"])
    lru = _overloaded(make_engine, "lru")
    assert asyncio.run(_serve(lru, alternating)) == alternating
    assert (lru.switches, _backend(lru).loads) == (6, alternating)
