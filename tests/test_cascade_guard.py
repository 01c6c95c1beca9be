"""The cascade's live guard (coserve.engine.cascade_guard): escalation share per category over the
last ``guard_window`` cascades; above break-even (or ``guard_max_escalation``) single choice, with a
cascade every ``guard_probe``-th request. Expectations worked out by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from coserve.config_routing import CascadeSettings
from coserve.engine.cascade_guard import EscalationGuard, break_even
from tests.test_cascade import HIGH, LOW
from tests.test_cascade_categories import CHAT, CODE, ask, serve  # noqa: F401 (fixture)


def test_break_even_from_params() -> None:
    assert break_even(1.0, 4.0) == 0.75  # 1 - 1/4
    assert EscalationGuard(5, 2).limit(1.0, 4.0) == 0.75
    assert EscalationGuard(5, 2, max_escalation=0.5).limit(1.0, 4.0) == 0.5


def test_guard_holds_probes_and_releases() -> None:
    guard = EscalationGuard(window=4, probe=3)
    for _ in range(4):  # the window fills: every cascade escalated (share 1.0 > 0.5)
        assert guard.allows("code", 0.5)
        guard.record("code", True)
    assert guard.share("code") == 1.0
    assert [guard.allows("code", 0.5) for _ in range(3)] == [False, False, True]  # 3rd: a probe
    assert guard.allows("chat", 0.5)  # another category is unaffected
    for _ in range(3):  # easier traffic seen by probes: 1 escalated of the last 4 = 0.25
        guard.record("code", False)
    assert guard.share("code") == 0.25
    assert guard.allows("code", 0.5)


def test_guard_off_allows_everything() -> None:
    guard = EscalationGuard(window=0, probe=1)
    for _ in range(10):
        guard.record("code", True)
        assert guard.allows("code", 0.0)
    assert CascadeSettings(check="c.json").guard_window == 0  # off by default


@pytest.mark.parametrize(
    "bad", [{"guard_window": -1}, {"guard_probe": 0}, {"guard_max_escalation": 0}, {"guard_max_escalation": 1.5}]
)
def test_bad_guard_settings_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CascadeSettings(check="c.json", **bad)


def test_served_cascade_switches_to_single_choice(serve: Callable[..., TestClient]) -> None:  # noqa: F811
    client = serve({"small": LOW, "coder": LOW, "big": HIGH}, guard_window=2, guard_probe=2)
    reasons = [ask(client, CODE)["coserve"]["cascade"][0]["reason"] for _ in range(5)]
    # two cascades fill the window (both escalated: share 1.0 > break-even); then single choice,
    # a probe (the 2nd held request cascades), single choice again
    assert reasons == ["check", "check", "guard", "check", "guard"]
    assert ask(client, CHAT)["coserve"]["cascade"][0]["reason"] == "no_cascade"
