"""The placement controller's live traffic from the decision log (coserve.distributed.shared_log.
count_experts, PlacementService.read_log), without Ray: the counts per expert come from the rows
written since the last question and made since the window start; while the log does not answer the
controller plans with the ingresses' reports, and the log's counts take over again when it answers.
The placements are those worked out by hand in tests/test_placement_controller.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from test_controller_state import MemoryStore
from test_placement_controller import _controller

from coserve.distributed.ray_placement import PlacementService
from coserve.distributed.shared_log import count_experts
from coserve.store.log import DecisionLog, DecisionRow, connect


def _row(request_id: str, at: float, expert: str) -> DecisionRow:
    return DecisionRow(request_id, at, expert, expert, None, None, None, None, "200", 0.1, 3, 4)


def test_counts_are_of_rows_after_the_cursor_made_since_the_window_start(tmp_path: Path) -> None:
    path = tmp_path / "decisions.sqlite"
    log = DecisionLog(path).start()
    made = [("r1", 100.0, "big"), ("r2", 200.0, "small"), ("r3", 210.0, "small"), ("r4", 300.0, "big")]
    for request_id, at, expert in made:
        log.record(_row(request_id, at, expert))
    log.flush()
    conn = connect(path)
    assert count_experts(conn, 0, 150.0) == (4, {"big": 1, "small": 2})  # r1 is before the window
    log.record(_row("r5", 120.0, "coder"))  # arrives late, made before the window: not counted
    log.record(_row("r6", 250.0, "coder"))  # arrives late, made in the window: counted once
    log.flush()
    assert count_experts(conn, 4, 150.0) == (6, {"coder": 1})
    assert count_experts(conn, 6, 150.0) == (6, {})
    conn.close()
    log.close()


def test_a_fallback_counts_for_the_expert_the_map_chose(tmp_path: Path) -> None:
    # The map chose "mid" (not placed anywhere yet), the engine fell back to "big": the demand that
    # placement must see is mid's, or an expert the online map moves traffic to is never placed.
    path = tmp_path / "decisions.sqlite"
    log = DecisionLog(path).start()
    fell_back = DecisionRow("r1", 100.0, "m", "big", None, None, None, "mid,small", "200", 0.1, 3, 4)
    log.record(fell_back)
    log.record(_row("r2", 101.0, "big"))
    log.record(DecisionRow("r3", 102.0, "m", "big", None, None, None, "", "200", 0.1, 3, 4))
    log.flush()
    conn = connect(path)
    assert count_experts(conn, 0, 0.0) == (3, {"mid": 1, "big": 2})
    conn.close()
    log.close()


class FakeLogHandle:
    """Stands in for the decision-log deployment's handle (the real one: tests/test_ray_live.py's drift)."""

    def __init__(self) -> None:
        self.answers: list[Any] = []  # (last row, counts) or an exception, one per question
        self.asked: list[tuple[int, float]] = []
        self.expert_counts = self

    def remote(self, after: int, since: float) -> Any:
        self.asked.append((after, since))
        answer = self.answers.pop(0)

        async def reply() -> Any:
            if isinstance(answer, Exception):
                raise answer
            return answer

        return reply()


def test_the_controller_plans_with_the_logs_counts_and_falls_back_to_the_ingress_reports() -> None:
    controller, _ = _controller(32)
    handle = FakeLogHandle()
    args = (controller.cluster, controller.footprints, controller.placement, None)
    service = PlacementService(*args, store=MemoryStore(), decision_log=handle)
    start = service.controller.window_start
    handle.answers = [
        (3, {"big": 25, "nowhere": 4}),  # an expert that is not placeable is not counted
        ConnectionError("restarting (stand-in)"),
        (5, {"big": 2}),
        (6, {"small": 1}),
    ]
    service.controller.report({"small": 30})  # an ingress's sync
    asyncio.run(service.read_log())
    assert service.controller.traffic() == {"big": 25.0, "coder": 0.0, "small": 0.0}
    assert service.view()["counts_from"] == "decision log" and service.view()["counts"] == {"big": 25}
    asyncio.run(service.read_log())  # the log does not answer: the ingresses' reports
    assert service.controller.traffic() == {"big": 0.0, "coder": 0.0, "small": 30.0}
    assert service.view()["counts_from"] == "ingress reports"
    asyncio.run(service.read_log())  # back: its tally goes on from the last row counted
    assert service.controller.traffic() == {"big": 27.0, "coder": 0.0, "small": 0.0}
    service.controller.window_start = start + 60.0  # a re-plan started a new window
    asyncio.run(service.read_log())
    assert service.controller.logged == {"small": 1}
    assert handle.asked == [(0, start), (3, start), (3, start), (5, start + 60.0)]


def test_a_drift_in_the_logs_counts_re_plans_and_starts_a_new_window() -> None:
    from collections import Counter

    controller, _ = _controller(64)  # a: big + coder; b: coder + small
    controller.report({"small": 40})  # the ingresses' reports are not what counts while the log answers
    controller.logged = Counter({"big": 20})
    before = controller.window_start
    reason = asyncio.run(controller.tick({"a", "b"}))
    assert reason is not None and reason.startswith("traffic drifted")
    assert controller.view()["placed"] == {"a": ["big", "coder"], "b": ["big", "small"]}  # as for reports of big
    assert controller.logged is None and controller.counts == {}
    assert controller.window_start == controller.changed_at and controller.window_start > before
