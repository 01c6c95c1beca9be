"""The placement controller's saved state (coserve.distributed.controller_state and
ray_placement.resume), without Ray: a restarted controller resumes the placement, its version, the
live counts and the reason of the last change; unreadable or foreign state starts it from the
start-time plan with a warning, never an error. The placements are those worked out by hand in
tests/test_placement_controller.py (two 32 MiB nodes: big alone on a, coder + small on b)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from test_placement_controller import FOOTPRINTS, _controller

from coserve.distributed.controller import PlacementController
from coserve.distributed.controller_state import fingerprint, read_state, snapshot
from coserve.distributed.ray_placement import PlacementService, resume


class MemoryStore:
    """A StateStore in a dict (the real one is Ray's GCS key-value store: tests/test_ray_controller.py)."""

    def __init__(self, value: bytes | None = None):
        self.value = value
        self.puts = 0

    def get(self) -> bytes | None:
        return self.value

    def put(self, value: bytes) -> None:
        self.value, self.puts = value, self.puts + 1


def _inputs(controller: PlacementController) -> str:
    return fingerprint(controller.cluster, controller.footprints, controller.placement)


def test_a_restarted_controller_resumes_placement_version_counts_and_reason() -> None:
    before, _ = _controller(32)
    inputs = _inputs(before)  # of the start-time plan, as the service computes it once
    assert asyncio.run(before.tick({"a"})) == "nodes left: b"
    before.report({"small": 7, "big": 2})
    saved = before.view()
    assert saved["placed"] == {"a": ["big", "coder", "small"], "b": []}
    store = MemoryStore(snapshot(before, inputs))

    after, hosts = _controller(32)  # the restarted replica: built from the same start-time inputs
    assert after.view()["version"] == 1
    assert resume(after, store, inputs) == f"resumed version {saved['version'] + 1}"
    view = after.view()
    assert view["version"] == saved["version"] + 1  # continues, one step on: no ingress sees a step back
    assert view["placed"] == saved["placed"] and view["alive"] == ["a"]
    assert view["reason"] == "nodes left: b" and view["changed_at"] == saved["changed_at"] is not None
    assert after.counts == {"small": 7, "big": 2}
    assert after.placement.replicas == before.placement.replicas
    assert after.placement.busiest_load == before.placement.busiest_load
    # Its first tick sets the host alive to the resumed placement, and nothing is re-planned.
    assert asyncio.run(after.tick({"a"})) is None
    assert [c[:3] for c in hosts.calls] == [("assign", "a", "big,coder,small")]


def test_a_move_interrupted_by_the_restart_is_set_back_and_planned_again() -> None:
    before, _ = _controller(32)
    inputs = _inputs(before)
    snapshots: list[bytes] = []

    async def keep() -> None:
        snapshots.append(snapshot(before, inputs))

    before.checkpoint = keep
    asyncio.run(before.tick({"a"}))
    pending = json.loads(snapshots[0])  # saved when the move started, before any host call
    assert pending["pending"]["reason"] == "nodes left: b" and pending["version"] == 2
    assert json.loads(snapshots[-1])["pending"] is None

    after, hosts = _controller(32)
    resume(after, MemoryStore(snapshots[0]), inputs)
    view = after.view()
    assert view["version"] == 3 and view["placed"] == {"a": ["big"], "b": []}  # the placement in force
    assert view["reason"] is not None and "restarted during a move (nodes left: b)" in view["reason"]
    assert asyncio.run(after.tick({"a"})) == "nodes left: b"  # decided again
    assert hosts.calls[0][:3] == ("assign", "a", "big+pin")
    assert after.view()["placed"] == {"a": ["big", "coder", "small"], "b": []}


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xffnot json",
        b'{"format": 1, "version": "seven"}',
        b'{"format": 1, "version": 4, "fingerprint": "@inputs"}',  # this application's, no placement
        b"[1, 2]",
        b"@bad-time",  # this application's state with a time that is not a number
    ],
)
def test_unreadable_state_starts_from_the_plan_with_a_warning(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    controller, _ = _controller(32)
    start, inputs = controller.view(), _inputs(controller)
    if raw == b"@bad-time":
        later, _ = _controller(32)
        asyncio.run(later.tick({"a"}))
        data = json.loads(snapshot(later, inputs))
        raw = json.dumps({**data, "changed_at": "noon"}).encode()
    with caplog.at_level(logging.WARNING, logger="coserve.distributed"):
        said = resume(controller, MemoryStore(raw.replace(b"@inputs", inputs.encode())), inputs)
    assert said.startswith("saved state unreadable")
    assert controller.view() == start and controller.view()["version"] == 1
    assert any("not resumed" in r.getMessage() for r in caplog.records)


def test_state_naming_a_node_or_expert_this_application_lacks_is_not_resumed() -> None:
    before, _ = _controller(32)
    inputs = _inputs(before)
    asyncio.run(before.tick({"a"}))
    data = json.loads(snapshot(before, inputs))
    data["placement"]["replicas"][0][1] = "z"  # a node the cluster file does not have
    controller, _ = _controller(32)
    assert resume(controller, MemoryStore(json.dumps(data).encode()), inputs).startswith("saved state unreadable")
    assert controller.view()["version"] == 1 and controller.view()["placed"]["b"] == ["coder", "small"]


def test_state_of_other_inputs_keeps_the_plan_and_continues_the_version() -> None:
    before, _ = _controller(32)
    asyncio.run(before.tick({"a"}))
    store = MemoryStore(snapshot(before, "another-deployment"))
    controller, _ = _controller(32)
    said = resume(controller, store, _inputs(controller))
    # Saved at version 4 (b withdrawn: 2; coder, then small advertised on a when ready: 3, 4).
    assert said == "saved state is of other inputs: the start-time plan, version 5"
    assert controller.view()["placed"] == {"a": ["big"], "b": ["coder", "small"]}


def test_read_state_checks_the_format_and_version() -> None:
    controller, _ = _controller(32)
    raw = snapshot(controller, "x")
    assert read_state(raw).version == 1 and read_state(raw).fingerprint == "x"
    for bad in ({"format": 2, "version": 1}, {"format": 1, "version": 0}, {"format": 1, "version": True}):
        with pytest.raises(ValueError):
            read_state(json.dumps(bad).encode())
    assert set(FOOTPRINTS) == {e for e, _, _, _ in json.loads(raw)["placement"]["replicas"]}


class BrokenStore(MemoryStore):
    def put(self, value: bytes) -> None:
        raise ConnectionError("GCS unavailable (stand-in)")


def test_the_service_writes_on_change_only_and_a_new_service_resumes_from_the_store() -> None:
    controller, _ = _controller(32)
    store = MemoryStore()
    args = (controller.cluster, controller.footprints, controller.placement, None)
    service = PlacementService(*args, store=store)
    assert service.resumed == "no saved state: the start-time plan"
    asyncio.run(service.save())
    asyncio.run(service.save())
    assert store.puts == 1  # nothing changed: no second write
    service.controller.report({"small": 3})  # as an ingress's sync hands it in
    asyncio.run(service.save())
    assert store.puts == 2
    again = PlacementService(*args, store=store)  # the restarted replica
    assert again.resumed == "resumed version 2" and again.controller.counts == {"small": 3}
    broken = PlacementService(*args, store=BrokenStore())
    asyncio.run(broken.save())  # only warns: the next change or tick writes again
    assert broken._saved is None
