"""What a cluster's ingress replicas share, without Ray: the ingress-side SharedQuota and
SharedDecisionLog over the real QuotaService and DecisionLogService, joined by stand-in deployment
handles (``.method.remote(...)`` awaits the service's method, or fails like a dead replica).
The same classes run on Ray in tests/test_ray_state.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import write_library
from fastapi.testclient import TestClient

from coserve.config import ApiKey, load_library
from coserve.distributed.shared_log import DecisionLogService, SharedDecisionLog
from coserve.distributed.shared_quota import QuotaService, SharedQuota
from coserve.engine.engine import Engine
from coserve.errors import ServiceUnavailable, TooManyRequests
from coserve.server.app import create_app
from coserve.server.auth import hash_key
from coserve.store.log import DecisionRow

LIMITED, BUDGETED, FREE = "sk-limited", "sk-budget", "sk-free"


class Handle:
    """A stand-in deployment handle over a real service object; ``down`` makes every call fail."""

    def __init__(self, service: Any):
        self.service, self.down, self.calls = service, False, 0

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                handle.calls += 1
                if handle.down:
                    raise RuntimeError("ActorUnavailableError (stand-in)")
                return getattr(handle.service, method)(*args)

        return Method


def _keys_library(tmp_path: Path) -> Path:
    keys = [
        {"sha256": hash_key(LIMITED), "requests_per_minute": 3},
        {"sha256": hash_key(BUDGETED), "tokens_per_day": 100},
        hash_key(FREE),
    ]
    return write_library(tmp_path, server={"api_keys": keys, "log": {"path": str(tmp_path / "one.sqlite")}})


def _two_replicas(tmp_path: Path) -> tuple[Handle, SharedQuota, SharedQuota]:
    library = _keys_library(tmp_path)
    handle = Handle(QuotaService(str(library)))
    keys = load_library(library).server.api_keys
    return handle, SharedQuota(handle, keys), SharedQuota(handle, keys)


def test_two_ingress_replicas_share_one_request_rate(tmp_path: Path) -> None:
    handle, first, second = _two_replicas(tmp_path)
    digest = hash_key(LIMITED)

    async def run() -> None:
        await first.take(digest, chat=True)
        await second.take(digest, chat=False)  # every /v1 request counts, on either replica
        await second.take(digest, chat=True)
        for replica in (first, second):  # 3 a minute over the cluster: both refuse the fourth
            with pytest.raises(TooManyRequests) as refused:
                await replica.take(digest, chat=True)
            assert (refused.value.status, refused.value.code) == (429, "rate_limited")
            assert 1 <= (refused.value.retry_after or 0) <= 20  # a third of a minute refills one

    asyncio.run(run())
    assert handle.calls == 5


def test_keys_without_a_limit_that_applies_cost_no_call(tmp_path: Path) -> None:
    handle, first, _ = _two_replicas(tmp_path)
    asyncio.run(first.take(hash_key(FREE), chat=True))
    asyncio.run(first.take(hash_key(BUDGETED), chat=False))  # a budget limits chat requests only
    assert handle.calls == 0
    asyncio.run(first.take(hash_key(BUDGETED), chat=True))
    assert handle.calls == 1


def test_tokens_spent_on_both_replicas_add_up_to_one_budget(tmp_path: Path) -> None:
    handle, first, second = _two_replicas(tmp_path)
    digest = hash_key(BUDGETED)

    async def run() -> None:
        await first.take(digest, chat=True)
        first.spend(digest, 60)
        second.spend(digest, 30)
        first.spend(hash_key(FREE), 1000)  # no budget: not sent
        await first.flush()
        await second.flush()
        assert await handle.service.used(digest) == 90
        await second.take(digest, chat=True)  # 90 < 100: still served (the crossing one is served in full)
        handle.down = True  # a spend the counter does not take is kept and sent again
        second.spend(digest, 20)
        await asyncio.sleep(0.05)
        assert second.unsent == {digest: 20}
        handle.down = False
        await second.flush()
        assert await handle.service.used(digest) == 110
        with pytest.raises(TooManyRequests) as refused:
            await first.take(digest, chat=True)
        assert refused.value.code == "token_budget_exceeded"
        first.spend(digest, 5)  # spent as the replica stops: sent by its shutdown
        await first.aclose()
        assert await handle.service.used(digest) == 115
        handle.down = True
        hurried = SharedQuota(handle, load_library(_keys_library(tmp_path)).server.api_keys, timeout_s=0.2)
        hurried.spend(digest, 7)
        await hurried.aclose()  # the counter is gone too: gives up, does not hang
        assert hurried.unsent == {digest: 7}

    asyncio.run(run())


def test_an_unreachable_counter_refuses_limited_keys_with_503_and_serves_the_others(
    tmp_path: Path, make_engine: Callable[..., Engine]
) -> None:
    handle, first, _ = _two_replicas(tmp_path)
    handle.down = True
    with pytest.raises(ServiceUnavailable) as refused:
        asyncio.run(first.take(hash_key(LIMITED), chat=True))
    assert (refused.value.status, refused.value.code, refused.value.retry_after) == (503, "quota_unavailable", 5)
    assert first.unreachable == 1
    asyncio.run(first.take(hash_key(FREE), chat=True))  # no limit: served, no call

    keys = [{"sha256": hash_key(LIMITED), "requests_per_minute": 3}, hash_key(FREE)]
    engine = make_engine(server={"api_keys": keys})
    quota = SharedQuota(handle, engine.library.server.api_keys)
    body = {"model": "coserve", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    with TestClient(create_app(engine, quota=quota)) as client:
        response = client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {LIMITED}"})
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "quota_unavailable"
        assert LIMITED not in response.text and hash_key(LIMITED) not in response.text
        free = client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {FREE}"})
        assert free.status_code == 200


def _row(request_id: str) -> DecisionRow:
    return DecisionRow(request_id, 1.0, "coserve", "small", "chat", 0.9, "map", None, "200", 0.1, 3, 4)


def _logged(path: Path) -> tuple[list[str], list[tuple[str, float]]]:
    with sqlite3.connect(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM decisions ORDER BY id")]
        scores = [(r[0], r[1]) for r in conn.execute("SELECT id, score FROM feedback ORDER BY seq")]
    return ids, scores


def test_two_replicas_write_one_log_and_feedback_finds_either_replicas_row(tmp_path: Path) -> None:
    library = _keys_library(tmp_path)
    service = DecisionLogService(str(library), find_row_s=0.3)
    handle = Handle(service)

    async def run() -> None:
        first = await SharedDecisionLog(handle, store_text=False, flush_interval_s=0.01).open()
        second = await SharedDecisionLog(handle, store_text=False, flush_interval_s=0.01).open()
        assert first.path == tmp_path / "one.sqlite" and first.online_state() is None
        first.start()
        second.start()
        assert first.record(_row("a1")) and first.record(_row("a2")) and second.record(_row("b1"))
        # Feedback on replica b for a's decision: b sends its own rows, the service finds a's.
        assert await asyncio.wrap_future(second.feedback_once("a1", 0.5)) == ("stored", "chat", "small", None)
        assert await asyncio.wrap_future(first.feedback_once("b1", -1.0)) == ("stored", "chat", "small", None)
        assert await asyncio.wrap_future(first.feedback_once("a1", 1.0)) == ("duplicate", None, "", None)
        assert await asyncio.wrap_future(second.feedback("a2", 1.0)) is True
        assert await asyncio.wrap_future(second.feedback("nobody", 1.0)) is False  # after find_row_s
        await first.aclose()
        await second.aclose()
        await service.flush()

    asyncio.run(run())
    assert _logged(tmp_path / "one.sqlite") == (["a1", "a2", "b1"], [("a1", 0.5), ("b1", -1.0), ("a2", 1.0)])
    service.log.close()


def test_a_full_queue_drops_and_counts_and_an_unreachable_log_keeps_the_rows(tmp_path: Path) -> None:
    library = _keys_library(tmp_path)
    service = DecisionLogService(str(library))
    handle = Handle(service)

    async def run() -> None:
        shared = await SharedDecisionLog(handle, store_text=False, max_queue_rows=3, flush_interval_s=0.01).open()
        handle.down = True  # the deployment is restarting: rows wait, within the bound
        shared.start()
        assert [shared.record(_row(f"r{i}")) for i in range(4)] == [True, True, True, False]
        assert shared.dropped == 1
        await asyncio.sleep(0.1)  # the sender tried, failed, and kept them
        assert [r.id for r in shared.queue] == ["r0", "r1", "r2"]
        with pytest.raises(ServiceUnavailable) as refused:
            await asyncio.wrap_future(shared.feedback("r0", 1.0))
        assert (refused.value.status, refused.value.code) == (503, "decision_log_unavailable")
        handle.down = False
        assert await shared.flush()
        await shared.aclose()
        await service.flush()

    asyncio.run(run())
    assert _logged(tmp_path / "one.sqlite") == (["r0", "r1", "r2"], [])
    service.log.close()


def test_api_keys_in_the_library_reach_the_shared_quota(tmp_path: Path) -> None:
    keys = load_library(_keys_library(tmp_path)).server.api_keys
    assert ApiKey(sha256=hash_key(LIMITED), requests_per_minute=3) in keys
    quota = SharedQuota(Handle(None), keys)
    assert quota.rated == {hash_key(LIMITED)} and quota.budgeted == {hash_key(BUDGETED)}


def test_every_answer_says_which_ingress_replica_served_it(make_engine: Callable[..., Engine]) -> None:
    from coserve.distributed.cluster_state import mark_replica

    app = mark_replica(create_app(make_engine()), "replica-7")
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with TestClient(app) as client:
        assert client.get("/health").headers["x-coserve-ingress"] == "replica-7"
        with client.stream("POST", "/v1/chat/completions", json=body) as streamed:
            assert streamed.headers["x-coserve-ingress"] == "replica-7"
            assert [line for line in streamed.iter_lines() if line][-1] == "data: [DONE]"
        assert client.get("/v1/nothing").headers["x-coserve-ingress"] == "replica-7"  # errors too
