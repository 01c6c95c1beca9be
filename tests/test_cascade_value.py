"""Per-category cascade plans with a value gate (coserve.eval.cascade_value), tested with plain numbers,
and the nested-CV study that chooses and judges them (scripts/cascade_plan_study.py) on recorded rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coserve.config import LibraryConfig, load_library
from coserve.eval.cascade_value import (
    CategoryRule,
    Probabilities,
    choose_for_target,
    choose_rules,
    plan_replay,
    target_margin,
)
from tests.conftest import write_library
from tests.test_cascade_scripts import script

CODE = {"chat": 0.05, "code": 0.9, "math": 0.05}  # the small library's map: code -> coder (0.5 B)
CHAT = {"chat": 0.9, "code": 0.05, "math": 0.05}  # chat -> small (0.1 B)


@pytest.fixture
def library(tmp_path: Path) -> LibraryConfig:
    return load_library(write_library(tmp_path))


def row(item: str, probabilities: dict[str, float], small: float, coder: float, big: float) -> dict[str, Any]:
    return {
        "id": item,
        "scores": {"small": small, "coder": coder, "big": big},
        "router": {"probabilities": probabilities},
    }


def probabilities(check: dict[str, float], small: dict[str, float], coder: dict[str, float]) -> Probabilities:
    """The check's P(good) of small's answer per item (coder's and big's: 0.9) and the two gates."""
    items = {*check, *small, *coder}
    full = {(i, e): 0.9 for i in items for e in ("coder", "big")}
    full.update({(i, "small"): p for i, p in check.items()})
    return Probabilities(full, {"small": small, "coder": coder})


def test_each_part_of_a_rule_on_one_item(library: LibraryConfig) -> None:
    rows = [row("a", CODE, 0.0, 1.0, 1.0)]
    p = probabilities({"a": 0.1}, {"a": 0.5}, {"a": 0.58})
    replay = lambda rule: plan_replay(rows, library, {"code": rule}, p)  # noqa: E731

    single = replay(CategoryRule(None))
    assert single["plan"] == single["single"] == {"items": 1, "quality": 1.0, "avg_params_b": 0.5}
    # from small: the check rejects its answer (0.1 < 0.5), coder's is accepted: 0.1 + 0.5 B
    assert replay(CategoryRule("small"))["plan"] == {"items": 1, "quality": 1.0, "avg_params_b": 0.6}
    assert replay(CategoryRule("small", threshold=0.05))["plan"]["quality"] == 0.0  # small's answer kept
    # the start gate: P(small) 0.5 below 0.6 skips it; coder answers alone
    assert replay(CategoryRule("small", start_limit=0.6))["plan"]["avg_params_b"] == 0.5
    # the value gate: coder's gain over small, 0.58 - 0.5 = 0.08, is below the margin 0.1: small alone
    stopped = replay(CategoryRule("small", start_limit=0.6, value_margin=0.1))
    assert stopped["plan"] == {"items": 1, "quality": 0.0, "avg_params_b": 0.1} and stopped["steps"] == {"a": 1}
    assert replay(CategoryRule("small", value_margin=0.05))["plan"]["avg_params_b"] == 0.6  # worth asking
    # max_steps 1: the start answers, whatever the check says
    assert plan_replay(rows, library, {"code": CategoryRule("small")}, p, max_steps=1)["plan"]["quality"] == 0.0


def test_a_category_without_a_rule_answers_by_single_choice(library: LibraryConfig) -> None:
    rows = [row("a", CODE, 1.0, 0.0, 1.0), row("b", CHAT, 0.0, 1.0, 1.0)]
    p = probabilities({"a": 0.9, "b": 0.9}, {"a": 0.9, "b": 0.9}, {"a": 0.9, "b": 0.9})
    result = plan_replay(rows, library, {"code": CategoryRule("small")}, p)
    assert result["per_item"] == {"a": (1.0, 0.1), "b": (0.0, 0.1)}  # b: chat's single choice, small
    assert result["single_per_item"] == {"a": (0.0, 0.5), "b": (0.0, 0.1)}


def test_the_target_margin() -> None:
    assert target_margin(3.0, 1.0) == pytest.approx(0.0)  # exactly +3 points at the same parameters
    assert target_margin(0.0, 0.8) == pytest.approx(0.0)  # exactly as good at 80%
    assert target_margin(5.0, 0.9) == pytest.approx(1.5)  # 2 points above, 10% below: the nearer edge
    assert target_margin(1.0, 0.7) == pytest.approx(1.0)  # the second clause, by a point
    assert target_margin(2.0, 0.9) < 0 and target_margin(-1.0, 0.5) < 0 and target_margin(10.0, 1.01) < 0


def test_rules_are_chosen_by_the_price_of_parameters(library: LibraryConfig) -> None:
    """Small is right on half the code items and the check knows which: starting at small saves
    parameters on those; coder always right. A cheap price keeps coder's quality, a dear one small's cost."""
    rows = [row(f"i{k}", CODE, float(k % 2), 1.0, 1.0) for k in range(10)]
    check = {f"i{k}": 0.9 if k % 2 else 0.1 for k in range(10)}
    p = probabilities(check, dict.fromkeys(check, 0.5), dict.fromkeys(check, 0.9))
    grid = [CategoryRule(None), CategoryRule("small"), CategoryRule("small", value_margin=1.0)]
    assert choose_rules(rows, library, grid, p, price=0.1) == {"code": grid[1]}  # same quality, fewer params
    assert choose_rules(rows, library, grid, p, price=100.0) == {"code": grid[2]}  # small alone, at any quality
    # the target: the cascade is as good at (5 * 0.1 + 5 * 0.6) / 10 = 0.35 of coder's 0.5 B: 70%
    assert choose_for_target(rows, library, grid, p) == {"code": grid[1]}
    assert choose_for_target(rows[:4], library, grid, p, min_items=5) == {}  # too few rows: single choice


def test_the_study_runs_on_recorded_rows(tmp_path: Path) -> None:
    out = tmp_path / "study.json"
    printed = script(
        "scripts/cascade_plan_study.py", "--data", "docs/data/cascade9-train.jsonl", "--seeds", "0", "--folds", "3",
        "--out", str(out),
    )  # fmt: skip
    data = json.loads(out.read_text())
    pooled = data["mean_over_seeds"]["pooled"]
    assert {"plan", "plan_for_target", "session11_plan", "single", "perfect_check", "perfect_all"} <= set(pooled)
    assert pooled["single"]["points_vs_single"] == 0 and pooled["single"]["params_vs_single"] == 1
    # session 9's sample: 40 HumanEval and 19 GSM8K items, every column scored on every one
    assert data["mean_over_seeds"]["humaneval"]["plan"]["items"] == 40 and pooled["plan"]["items"] == 59
    assert all(len(folds) == 3 for folds in data["rules_chosen"]["0"].values())
    assert "== pooled (59 items" in printed
