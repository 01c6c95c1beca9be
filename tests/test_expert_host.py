"""The expert host (coserve.distributed.ray_host.ExpertHost) as the placement controller drives it,
without Ray: experts added (resident ones pinned and loaded), removed after their running calls
finish, a restarted host reset; a call meant for another node refused; the node's memory budgets;
its metrics text; the nodes a replica may claim and its first guess (coserve.distributed.ray_node_host);
a host builds no router (it serves calls an ingress routed) and its engine refuses to route.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MiB, library_data

from coserve.config import load_library
from coserve.distributed.ray_host import NOT_PLACED, WRONG_NODE, ExpertHost, node_library
from coserve.distributed.ray_node_host import first_guess, nodes_carried
from coserve.engine.call import Call
from coserve.engine.engine import NO_ROUTER
from coserve.errors import ConfigError, ExpertLoadError, ServiceError
from coserve.types import Message, Request, Sampling

GiB = 2**30


@pytest.fixture
def library(tmp_path: Path) -> str:
    data = library_data()
    data["experts"][2]["options"]["token_delay"] = 0.02  # big: 12 tokens take about 0.25 s
    path = tmp_path / "library.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


def _request(tokens: int = 12) -> Request:
    return Request((Message("user", "one two three"),), "big", Sampling(max_tokens=tokens))


async def _answer(host: ExpertHost, expert: str) -> list[Any]:
    """What the host streams after its node record (which it sends first)."""
    said, *items = [item async for item in host.stream(_request(), expert, [host.node])]
    assert said == {"node": host.node}
    return items


def test_added_resident_expert_is_loaded_and_pinned(library: str) -> None:
    host = ExpertHost(library, "a", ["small"], 64 * MiB)

    async def run() -> dict[str, Any]:
        state = await host.add("a", "big", True)
        assert state["tiers"] == {"big": "active", "small": "disk"}
        # small needs room: only small itself may go (big is pinned), so big stays ACTIVE
        assert [type(c).__name__ for c in await _answer(host, "small")][-1] == "Chunk"
        health = host.health("a")
        await host.close()
        return health

    health = asyncio.run(run())
    assert health["experts"]["big"]["tier"] == "active" and health["experts"]["big"]["pinned"] is True
    assert health["experts"]["small"]["pinned"] is False
    assert health["node"] == "a" and health["memory"]["ram_budget_bytes"] == 64 * MiB


def test_a_host_builds_no_router_and_serves_the_calls_routed_elsewhere(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coserve.router.router import CoERouter

    def no_fit(*_: Any, **__: Any) -> None:
        raise AssertionError("a host must not build a router")

    monkeypatch.setattr(CoERouter, "load_or_fit", no_fit)
    host = ExpertHost(library, "a", ["small"], 64 * MiB)

    async def run() -> list[Any]:
        items = await _answer(host, "small")
        with pytest.raises(ServiceError) as refused:
            await host.engine.route(Call(_request()))
        await host.close()
        assert (refused.value.status, refused.value.code) == (500, NO_ROUTER)
        assert "without a router" in refused.value.message
        return items

    items = asyncio.run(run())
    # The fake expert's answer: its name, "says:", then the prompt's words repeated, 12 tokens in all.
    assert "".join(c.text for c in items) == "small says: one two three one two three one two three one"
    assert host.engine.online is None


def test_removed_expert_finishes_its_running_calls_then_refuses_new_ones(library: str) -> None:
    host = ExpertHost(library, "a", ["big"], 64 * MiB, resident=["big"])

    async def run() -> tuple[list[Any], dict[str, Any], list[Any]]:
        running = asyncio.ensure_future(_answer(host, "big"))
        while host.running["big"] == 0:
            await asyncio.sleep(0.01)
        state = await host.remove("a", "big")  # returns once the running call has finished
        assert running.done()
        after = await _answer(host, "big")
        answered = await running
        await host.close()
        return answered, state, after

    answered, state, after = asyncio.run(run())
    # the call ran to its end: the fake's "big says:" and the prompt's words, 12 tokens in all
    assert "".join(c.text for c in answered).split() == ["big", "says:"] + ["one", "two", "three"] * 3 + ["one"]
    assert answered[-1].finish_reason == "length"
    assert state["tiers"] == {}
    assert after == [{"error": "ExpertLoadError", "message": "expert 'big' is not placed on node 'a'",
                      "param": None, "code": NOT_PLACED, "retry_after": None}]  # fmt: skip


def test_assign_sets_exactly_the_experts_given(library: str) -> None:
    host = ExpertHost(library, "b", ["small", "coder"], 64 * MiB)  # its start-time experts

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        emptied = await host.assign("b", [], [])
        assigned = await host.assign("b", ["coder", "big"], ["big"])
        await host.close()
        return emptied, assigned

    emptied, assigned = asyncio.run(run())
    assert emptied == {"node": "b", "tiers": {}}
    assert assigned == {"node": "b", "tiers": {"big": "active", "coder": "ram"}}  # big pinned and loaded


def test_accelerator_budget_bounds_active_where_the_library_has_device_experts(tmp_path: Path) -> None:
    data = library_data()
    path = tmp_path / "library.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cpu = node_library(load_library(path), 64 * MiB, 8 * GiB)
    assert (cpu.memory.ram, cpu.memory.active) == (64 * MiB, 64 * MiB)  # no expert on a device
    data["experts"][2].update(backend="llamacpp", source="big.gguf", options={"n_gpu_layers": -1})
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    gpu = node_library(load_library(path), 64 * MiB, 8 * GiB)
    assert (gpu.memory.ram, gpu.memory.active) == (64 * MiB, 8 * GiB)
    assert node_library(load_library(path), 64 * MiB, 0).memory.active == 64 * MiB  # no accelerator here


def test_host_metrics_are_its_engine_registry(library: str) -> None:
    host = ExpertHost(library, "a", ["small"], 64 * MiB)
    asyncio.run(_answer(host, "small"))
    assert 'coserve_expert_loads_total{expert="small"} 1.0' in host.metrics("a")
    asyncio.run(host.close())


def test_a_call_for_another_node_is_refused(library: str) -> None:
    host = ExpertHost(library, "a", ["small"], 64 * MiB)
    with pytest.raises(ExpertLoadError) as caught:
        host.state("b")
    assert caught.value.code == WRONG_NODE
    with pytest.raises(ExpertLoadError):
        asyncio.run(host.add("b", "big", False))
    assert host.state("a") == {"node": "a", "tiers": {"small": "disk"}}  # nothing was added
    asyncio.run(host.close())


def test_a_replica_claims_among_the_nodes_its_ray_node_carries() -> None:
    one = {"CPU": 1.0, "coserve-node-b": 1.0, "coserve-host": 1.0}
    assert nodes_carried(one) == ["b"] and first_guess(["b"], 0) == "b"
    # every cluster-file node started on one Ray node (coserve serve --ray without an address): the
    # replica's local rank is its first guess, in name order; a rank past the end guesses nothing
    local = {"coserve-node-b": 1.0, "coserve-node-a": 1.0, "coserve-node-c": 1.0, "coserve-host": 3.0}
    names = nodes_carried(local)
    assert names == ["a", "b", "c"]
    assert [first_guess(names, rank) for rank in range(4)] == ["a", "b", "c", None]
    with pytest.raises(ConfigError, match="no coserve-node-<name> resource"):
        nodes_carried({"CPU": 2.0, "coserve-host": 1.0, "coserve-node-x": 0.0})
