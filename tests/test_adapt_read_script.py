"""scripts/adapt_read_kg_s17.py: which checks a setting gains and loses against the defaults, from run records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from script_module import SCRIPTS, load_script

read = load_script("adapt_read_kg_s17")


def _run(seed: int, axis: str = "params", target: float = 15.0, **figures: Any) -> dict[str, Any]:
    """A run record meeting all four checks unless ``figures`` say otherwise."""
    run = {"split": "tune2", "axis": axis, "target": target, "seed": seed, "tracking_error_max": 0.01,
           "adaptive_minus_static": 0.02, "adaptive_minus_hindsight": -0.005, "recovery_requests": 1000,
           "true_alarm_delay": 500, "alarms": [], "explored_share": 0.01}  # fmt: skip
    run.update(figures)
    if run["true_alarm_delay"] is not None:
        run["alarms"] = [{"expert": "x", "side": "down", "true": True}, *run["alarms"]]
    return run


def test_a_lost_recovery_is_counted_at_its_budget_and_split_into_alarm_and_after() -> None:
    defaults = [_run(0), _run(1, axis="price", target=0.3)]
    # seed 0: the alarm 300 requests later and 900 more requests from it to the recovery: the check lost at 15 B
    candidate = [_run(0, true_alarm_delay=800, recovery_requests=2200), _run(1, axis="price", target=0.3)]
    out = read.reading(candidate, defaults)
    assert out["checks"]["recovery"]["params 15"] == {"gained": 0, "lost": 1}
    assert out["checks"]["recovery"]["price 0.3"] == {"gained": 0, "lost": 0}
    assert out["checks"]["hindsight"]["params 15"] == {"gained": 0, "lost": 0}
    assert out["per_budget"]["params 15"] == {"runs": 1, "checks": -1, "adaptive_minus_hindsight": 0.0,
                                              "recovery_requests": 1200.0}  # fmt: skip
    both = out["both_true_alarm"]
    assert both["runs"] == 2 and both["alarm_later"] == 1 and both["delay_mean"] == 150
    assert both["after_alarm_mean"] == 450 and both["after_alarm_over_1500"] == [0, 0]
    assert out["recovery_lost_alarm_later"] == 1 and out["recovery_lost"][0]["recovery_requests"] == [2200, 1000]


def test_a_gain_and_a_run_without_a_true_alarm() -> None:
    defaults = [_run(0, adaptive_minus_hindsight=-0.02), _run(1, true_alarm_delay=None, recovery_requests=1500)]
    candidate = [_run(0), _run(1, true_alarm_delay=None, recovery_requests=6000, alarms=[
        {"expert": "y", "side": "down", "true": False}])]  # fmt: skip
    out = read.reading(candidate, defaults)
    assert out["checks"]["hindsight"]["params 15"] == {"gained": 1, "lost": 0}
    assert out["both_true_alarm"]["runs"] == 1
    assert out["recovery_lost_no_true_alarm"] == 1 and out["recovery_lost"][0]["false_drops"] == [1, 0]


def test_runs_that_do_not_pair_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        read.reading([_run(0)], [_run(1)])


def test_a_file_without_defaults_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"results": {"kg": {"runs": []}}}))
    done = subprocess.run([sys.executable, str(SCRIPTS / "adapt_read_kg_s17.py"), "--runs", str(path), "--json",
                           str(tmp_path / "out.json")], capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and "no 'defaults' runs" in done.stderr and "Traceback" not in done.stderr
