"""The cluster's one online router without Ray: the decision-log deployment's learner (``OnlineOwner``,
run here as the plain ``DecisionLogService`` object) and two ingress replicas (``ClusterOnline``) over a
handle that calls it in-process. Feedback taken by the owner moves the map both replicas route with (one
version); the budget controller counts the rows of both; the owner alone saves, and a restarted owner
resumes; an owner that does not answer leaves the replicas routing with their last snapshot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_online_serving import _online_library
from test_trained_routing import trained_dir  # noqa: F401  (a fixture)

from coserve.config import load_library
from coserve.distributed.shared_log import DecisionLogService
from coserve.distributed.shared_online import ClusterOnline, OnlineOwner
from coserve.router.trained import load_trained
from coserve.store.log import DecisionRow

pytestmark = pytest.mark.usefixtures("trained_dir")  # `coserve train` on separable data, in tmp_path/router


class _Method:
    def __init__(self, target: Any, name: str) -> None:
        self.target, self.name = target, name

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            if self.target.down:
                raise ConnectionError("the decision-log deployment is gone")
            return await getattr(self.target.service, self.name)(*args)

        return call()


class _Handle:
    """The decision-log deployment's handle, calling the service object in this process."""

    def __init__(self, service: DecisionLogService) -> None:
        self.service, self.down = service, False
        self.online_exchange = _Method(self, "online_exchange")


def _row(request_id: str, category: str, expert: str, version: int | None = 0, status: str = "200") -> DecisionRow:
    return DecisionRow(
        request_id, time.time(), "coserve", expert, category, 0.9, "trained", None, status, 0.1, 3, 4, version
    )


def _setup(tmp_path: Path, **router: Any) -> tuple[DecisionLogService, _Handle, list[ClusterOnline]]:
    path = _online_library(tmp_path, **router)  # category mode, 2 pseudo-counts, no exploring; budget 7B
    service = DecisionLogService(str(path))
    library = load_library(path)
    trained = load_trained(tmp_path / "router")
    handle = _Handle(service)
    replicas = [ClusterOnline(library, trained, handle, name) for name in ("r1", "r2")]
    return service, handle, replicas


def _owner(service: DecisionLogService) -> OnlineOwner:
    assert service.online is not None
    return service.online


def test_feedback_taken_by_the_owner_moves_the_map_of_every_replica(tmp_path: Path, cache: Path) -> None:
    service, _, (first, second) = _setup(tmp_path)

    async def run() -> None:
        assert await first.exchange() and await second.exchange()
        assert first.current_map()["code"] == second.current_map()["code"] == "big"
        big = [first.choose(f"req-{i}", "code", set())[0] for i in range(2)]
        assert big == ["big", "big"] and first.version == 0
        await first.exchange()  # r1's decisions reach the owner only as rows, never as local learning
        # answered, but logged without a map version (routed before router.online): their cost is not counted
        await service.write([_row(f"req-{i}", "code", "big", version=None) for i in range(2)])
        for i in range(2):  # scores sent to r1 or r2 alike: the owner finds the rows in the one file
            outcome = await service.feedback(f"req-{i}", -1.0, True)
            assert outcome == ("stored", "code", "big", None)  # a row without a logged prediction
        # Code's posterior for big: 2 pseudo-counts at 1.0, plus two 0s -> 2/4 = 0.5 < mid's 0.6.
        assert await first.exchange() and await second.exchange()
        assert first.current_map()["code"] == second.current_map()["code"] == "mid"
        assert first.version == second.version == _owner(service).live.version == 2  # one re-solve per score
        assert second.choose("req-9", "code", set()) == ("mid", 2)
        assert first.apply("code", "mid", 1.0, "req-9") is False and first.version == 2  # never learns locally

    asyncio.run(run())
    service.log.close()


def test_the_budget_controller_counts_the_served_rows_of_every_replica(tmp_path: Path, cache: Path) -> None:
    service, _, (first, second) = _setup(tmp_path)

    async def run() -> None:
        await service.write([_row("a1", "code", "big"), _row("a2", "code", "big"), _row("a3", "chat", "small")])
        await service.write(
            [
                _row("b1", "chat", "mid"),
                _row("b2", "chat", "small"),
                _row("b3", "chat", "big", status="503"),  # not answered: no cost
                _row("b4", "chat", "big", version=None),  # not routed by the online map
            ]
        )
        assert await first.exchange() and await second.exchange()

    asyncio.run(run())
    controller = _owner(service).live.router.controller
    assert list(controller.recent) == [7.0, 7.0, 1.0, 3.0, 1.0]  # params of big, big, small, mid, small
    for replica in (first, second):
        figures = replica.figures()
        assert figures["realised"] == pytest.approx(19.0 / 5)
        assert figures["target"] == 7.0 and figures["version"] == 5.0  # one re-solve per served request
    service.log.close()


def test_the_owner_alone_saves_and_a_restarted_owner_resumes(tmp_path: Path, cache: Path) -> None:
    service, _, (first, _second) = _setup(tmp_path)

    async def run(log: DecisionLogService) -> None:
        await log.write([_row(f"req-{i}", "code", "big", version=None) for i in range(2)])  # scored, cost not counted
        for i in range(2):
            await log.feedback(f"req-{i}", -1.0, True)
        await log.save_online_state(first.export_state())  # a replica's (older) state is not written
        await log.flush()

    asyncio.run(run(service))
    saved = service.log.online_state()
    assert saved is not None and saved["version"] == 2
    service.log.close()
    restarted = DecisionLogService(str(tmp_path / "trained-library.yaml"))  # the owner's replica restarts
    owner = _owner(restarted)
    assert owner.live.version == 2 and owner.live.current_map()["code"] == "mid"
    assert owner.epoch != _owner(service).epoch

    async def follow() -> None:
        first.handle = _Handle(restarted)
        assert await first.exchange()  # another epoch: the replica takes the resumed state

    asyncio.run(follow())
    assert first.version == 2 and first.current_map()["code"] == "mid"
    restarted.log.close()


def test_replicas_keep_routing_with_their_last_snapshot_while_the_owner_is_down(tmp_path: Path, cache: Path) -> None:
    service, handle, (first, _second) = _setup(tmp_path)

    async def run() -> None:
        await service.write([_row("x", "code", "big")])
        assert await first.exchange()
        assert first.health()["owner_reachable"] is True and first.version == 1
        handle.down = True
        first.choose("y", "code", set())
        assert not await first.exchange() and not await first.exchange()
        health = first.health()
        assert health["owner_reachable"] is False and health["failed_exchanges"] == 2 and health["version"] == 1
        assert first.choose("z", "code", set()) == ("big", 1)  # still answered, with the last map
        handle.down = False
        assert await first.exchange() and first.health()["owner_reachable"] is True

    asyncio.run(run())
    service.log.close()


def test_a_replicas_prompt_scores_and_signals_reach_the_owner(tmp_path: Path, cache: Path) -> None:
    online = {"prior_strength": 2, "explore_cap": 0.0, "granularity": "prompt", "signals": ["failure"]}
    service, _, (first, second) = _setup(tmp_path, online=online)
    owner = _owner(service)
    code, big = owner.live.categories.index("code"), owner.live.experts.index("big")

    async def run() -> None:
        assert await first.exchange() and await second.exchange()
        first.choose("p1", "code", set(), np.array([0.1, 0.5, 0.9]))  # predicted 0.9 for big
        second.choose("p2", "code", set(), np.array([0.1, 0.5, 0.9]))
        assert second.failed("p2", "big", timed_out=False)  # failure is enabled: sent as a score of 0
        assert await first.exchange() and await second.exchange()
        assert owner.live.prediction("p1") is not None
        assert list(owner.live.prediction("p1")) == [0.1, 0.5, 0.9]  # type: ignore[arg-type]

    asyncio.run(run())
    posterior = owner.live.router.posterior
    # The signal: a 0 for (code, big) at the category's mean: beta 1e-6 + 1.
    assert posterior.beta[code, big] == pytest.approx(1.0, abs=1e-5)
    # The score on p1 is learnt against its prediction: 0 - (0.9 - S[code, big] = 1.0) = 0.1, so beta
    # grows by 0.9 (a score without the prediction would add 1).
    assert owner.feedback("code", "big", -1.0, "p1")
    assert posterior.beta[code, big] == pytest.approx(1.9, abs=1e-5)
    service.log.close()
