"""A state saved by an earlier build of the online router resumes, and the router then acts as that build did.

``tests/data/online_state_1220811.json`` was written by the code at commit 1220811 (``python
tests/test_online_saved_compat.py OUT`` with that commit's ``coserve`` first on the path): a router with every
saved part in use (prompt mode, per-expert offsets, the feed-forward weight, a change detector that has fired,
alarm exploration, a probe and a confirmation episode) driven over a seeded stream, its exported state, and what
a fresh router that resumed it then chose and learnt over more of the stream. The router of today must resume
the state and repeat those decisions and that final state exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from coserve.config_routing import NeighbourSettings
from coserve.router.online import ChangeSettings, OnlineRouter
from coserve.router.online_confirm import ConfirmSettings
from coserve.router.online_probe import ProbeSettings

SAVED = Path(__file__).parent / "data" / "online_state_1220811.json"
CATEGORIES, EXPERTS = ["chat", "code", "math"], ["small", "mid", "big"]
OFFLINE = np.array([[0.55, 0.7, 0.8], [0.4, 0.6, 0.85], [0.3, 0.5, 0.75]])
COST = [1.0, 3.0, 8.0]
BEFORE, AFTER = 600, 200  # requests before the state is saved, and after it is resumed
ADDED = ("kg_counts", "kg_settle", "alarm_revert")  # keys the saved state gained after the fixture (sessions 16, 18)


def _router() -> OnlineRouter:
    return OnlineRouter(
        OFFLINE, COST, 3.0, prior_strength=10, max_count=40, explore_cap=0.05, window=100, seed=7,
        change=ChangeSettings(drift=0.05, threshold=3.0, reset_count=3.0, anchor=True), mix_window=100,
        granularity="prompt", prompt_weight=0.8, expert_rate=0.05, refresh_on_alarm=True, weight_floor=0.005,
        alarm_explore=30, alarm_explore_any_weight=True, neighbours=NeighbourSettings(k=5, memory=200),
        probe=ProbeSettings(share=0.3, requests=20, margin=0.1), confirm=ConfirmSettings(True, requests=40),
    )  # fmt: skip


def _drive(router: OnlineRouter, rng: np.random.Generator, requests: int, shocked: bool) -> list[list[Any]]:
    """Route ``requests`` seeded requests, serve each and feed back a seeded score (the big expert worse by 0.4
    once ``shocked``); the decisions made."""
    decisions = []
    for _ in range(requests):
        category = int(rng.integers(3))
        predicted = np.clip(OFFLINE[category] + rng.normal(0.0, 0.08, 3), 0.0, 1.0)
        vector = rng.normal(size=4)
        allowed = None if rng.random() < 0.9 else np.array([True, True, False])
        decision = router.choose(category, allowed, predicted, vector)
        router.served(decision.expert)
        truth = predicted[decision.expert] - (0.4 if shocked and decision.expert == 2 else 0.0)
        score = float(rng.random() < truth)
        router.feedback(category, decision.expert, score, float(predicted[decision.expert]), vector)
        decisions.append([decision.expert, decision.explored, decision.map_version])
    return decisions


def _record(saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The saved state, then what a router that resumed it (or ``saved``) chose and its state at the end (the
    fixture's content)."""
    rng = np.random.default_rng(11)
    before = _router()
    _drive(before, rng, BEFORE // 2, shocked=False)
    _drive(before, rng, BEFORE // 2, shocked=True)
    state = json.loads(json.dumps(before.export_state(CATEGORIES, EXPERTS)))
    resumed = _router()
    resumed.restore(state if saved is None else saved, CATEGORIES, EXPERTS)
    decisions = _drive(resumed, rng, AFTER, shocked=True)
    return {"state": state, "decisions": decisions, "end": resumed.export_state(CATEGORIES, EXPERTS)}


def test_a_state_saved_at_1220811_resumes_and_the_router_then_acts_as_it_did() -> None:
    saved = json.loads(SAVED.read_text())
    assert saved["state"]["change"] and saved["state"]["change_confirm"]  # the detector fired; an episode open
    assert max(saved["state"]["change_probe"]) > 0 and max(saved["state"]["alarm_explore"]) > 0
    now = json.loads(json.dumps(_record(saved["state"])))  # the saved state resumed, not today's own
    assert not set(ADDED) & set(saved["state"])  # the fixture predates them
    # an old state resumes them fresh: the feedback share counts only the requests and scores after the restart
    assert now["end"].pop("kg_counts") == [AFTER, AFTER] and now["state"].pop("kg_counts") == [BEFORE, BEFORE]
    assert now["end"].pop("kg_settle") == [0, 0, 0] and now["state"].pop("kg_settle") == [0, 0, 0]  # kg off
    idle = {"left": [0, 0, 0], "routed": [0, 0, 0], "move": [[0.0] * 3] * 3}  # alarm_revert off: nothing watched
    assert now["end"].pop("alarm_revert")["left"] == idle["left"] and now["state"].pop("alarm_revert") == idle
    assert now["decisions"] == saved["decisions"]  # the resumed router chose as that build's did
    assert now["end"] == saved["end"]  # and learnt as it did
    assert now["state"] == saved["state"]  # the same stream exported the same way


if __name__ == "__main__":  # write the fixture with the code on the path
    Path(sys.argv[1]).write_text(json.dumps(_record()) + "\n")
