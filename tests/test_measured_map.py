"""A library whose category -> expert map is solved from measured outcomes (``router.outcomes``) by
the router side (``with_measured_map``), and ``coserve map``, which shows the table, the maps at
budgets and the front."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from coserve.cli import main
from coserve.config import LibraryConfig, load_library
from coserve.errors import ConfigError
from coserve.paths import default_library_path
from coserve.router.measured import with_measured_map
from tests.conftest import library_data, write_library

# Mean scores per (category, expert) that the rows below average to; params small 0.1, coder 0.5, big 1.5.
TABLE = {
    "code": {"small": 0.1, "coder": 0.7, "big": 0.8},
    "math": {"small": 0.0, "coder": 0.2, "big": 0.6},
    "chat": {"small": 0.5, "coder": 0.3, "big": 0.55},
}


def write_outcomes(path: Path) -> Path:
    rows = []
    for category, scores in TABLE.items():
        # Two rows per category whose means are the table's: v - d and v + d.
        for i, sign in enumerate((-1, 1)):
            shifted = {e: round(v + sign * min(v, 1 - v, 0.05), 6) for e, v in scores.items()}
            rows.append({"id": f"{category}-{i}", "category": category, "scores": shifted})
    rows.append({"id": "other-0", "category": "poetry", "scores": {"small": 1.0, "coder": 1.0, "big": 1.0}})
    rows.append({"id": "x-0", "category": "chat", "scores": {"stranger": 1.0}})  # an expert not in the library
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + "\n")
    return path


def measured_library(tmp_path: Path, budget: float | None = None, **router: Any) -> Path:
    write_outcomes(tmp_path / "measured.jsonl")
    settings = {k: v for k, v in library_data()["router"].items() if k != "map"}
    settings["outcomes"] = "measured.jsonl"
    if budget is not None:
        settings["budget"] = {"avg_params_b": budget}
    settings.update(router)
    return write_library(tmp_path, router=settings)


def solved(path: Path) -> LibraryConfig:
    """The library at ``path`` with its map solved from its outcomes, as the router sees it."""
    return with_measured_map(load_library(path))


def test_the_map_is_solved_from_outcomes_under_the_budget(tmp_path: Path) -> None:
    # Unconstrained: the best expert per category (big everywhere; chat too: 0.55 > 0.5).
    assert solved(measured_library(tmp_path)).router.map == {"code": "big", "math": "big", "chat": "big"}
    # 0.7 B on average over equal categories: big on one category at most (1.5 + 0.5 + 0.1 = 2.1 / 3).
    lib = solved(measured_library(tmp_path, budget=0.7))
    assert lib.router.map == {"code": "coder", "math": "big", "chat": "small"}
    # The cheapest possible: small everywhere.
    assert set(solved(measured_library(tmp_path, budget=0.1)).router.map.values()) == {"small"}


def test_default_library_map_is_solved_from_its_shipped_outcomes() -> None:
    library = solved(default_library_path())
    assert library.router.outcomes is not None and library.path is not None
    shipped = library.path.parent / library.router.outcomes
    rows = [json.loads(line) for line in shipped.read_text().splitlines() if line.strip()]
    # Ids and scores only: the prompts stay in the suites' packages.
    assert rows and all(set(row) == {"id", "category", "scores"} for row in rows)
    assert all(re.fullmatch(r"(mmlu|gsm8k|humaneval|mtbench)-\d+", row["id"]) for row in rows)
    assert {row["category"] for row in rows} == set(library.categories)
    assert set(library.router.map) == set(library.categories)
    # The budget binds: the solved map spends at most the budget under the library's priors.
    priors = library.router.priors
    params = {e.name: e.params_b for e in library.experts}
    spent = sum(w * params[library.router.map[c]] for c, w in priors.items()) / sum(priors.values())
    assert library.router.budget.avg_params_b is not None and spent <= library.router.budget.avg_params_b


def test_the_file_is_read_once_and_a_solved_map_is_kept(tmp_path: Path) -> None:
    library = solved(measured_library(tmp_path))
    (tmp_path / "measured.jsonl").unlink()  # solving again would need it
    assert with_measured_map(library) is library


def test_priors_weight_the_categories(tmp_path: Path) -> None:
    # Chat is most of the traffic: a 0.7 B budget now buys big for math and maths only is rare.
    lib = solved(measured_library(tmp_path, budget=0.7, priors={"chat": 8, "code": 1, "math": 1}))
    cost = {"small": 0.1, "coder": 0.5, "big": 1.5}
    spent = (8 * cost[lib.router.map["chat"]] + cost[lib.router.map["code"]] + cost[lib.router.map["math"]]) / 10
    assert spent <= 0.7 and lib.router.map["chat"] == "small"


@pytest.mark.parametrize(
    ("router", "message"),
    [
        ({"map": {"code": "coder", "math": "big", "chat": "small"}}, "drop router.map"),
        ({"priors": {"poetry": 1.0}}, r"router.priors.poetry: not a category"),
        ({"priors": {"chat": 0.0}}, "at least one category needs a positive weight"),
        ({"budget": 0.05}, r"router.budget: budget 0.05 is below the cheapest"),
        # learning from traffic needs a trained router's scores: refused, not silently left off
        ({"online": {}}, r"router.online: needs router.trained"),
    ],
)
def test_bad_measured_settings(tmp_path: Path, router: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        solved(measured_library(tmp_path, **router))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", r"measured.jsonl:9: malformed JSON"),
        (json.dumps({"id": "z", "scores": {}}), "needs a string category"),
        (json.dumps({"id": "z", "category": "chat", "scores": {"big": "high"}}), r"scores.big must be a finite number"),
    ],
)
def test_bad_outcome_rows_name_the_line(tmp_path: Path, row: str, message: str) -> None:
    path = measured_library(tmp_path)
    text = (tmp_path / "measured.jsonl").read_text().splitlines()
    (tmp_path / "measured.jsonl").write_text("\n".join([*text[:8], row, *text[8:]]) + "\n")
    with pytest.raises(ConfigError, match=message):
        solved(path)


def test_a_category_without_scores_is_refused(tmp_path: Path) -> None:
    path = measured_library(tmp_path)
    rows = [json.loads(t) for t in (tmp_path / "measured.jsonl").read_text().splitlines() if t.strip()]
    for row in rows:
        if row["category"] == "math":
            del row["scores"]["coder"]  # coder was never measured on maths
    (tmp_path / "measured.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"no scores for \(category/expert\) math/coder"):
        solved(path)
    (tmp_path / "measured.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"router\.outcomes: cannot read"):
        solved(path)


def test_map_command_prints_the_table_maps_and_front(tmp_path: Path, capsys: Any) -> None:
    path = measured_library(tmp_path, budget=0.7)
    png, out = tmp_path / "front.png", tmp_path / "map.json"
    assert main(["map", "--library", str(path), "--budget", "1.2", "--plot", str(png), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "map at budget 0.7 B params" in printed and "map at budget 1.2 B params" in printed
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    result = json.loads(out.read_text())
    assert result["categories"] == ["code", "math", "chat"] and result["experts"] == ["small", "coder", "big"]
    assert result["S"][0] == pytest.approx([0.1, 0.7, 0.8])  # means over the rows; other experts and categories ignored
    assert result["n"][0] == [2, 2, 2]
    at_07, at_12 = result["maps"]
    assert at_07["map"] == {"code": "coder", "math": "big", "chat": "small"} and at_07["avg_cost"] <= 0.7
    assert at_12["avg_cost"] <= 1.2 and at_12["quality"] >= at_07["quality"]
    assert result["singles"]["big"]["quality"] == pytest.approx((0.8 + 0.6 + 0.55) / 3)
    # The front never gets worse as the budget grows, and its ends are the cheapest and the best maps.
    qualities = [p["quality"] for p in result["front"]]
    assert qualities == sorted(qualities) and qualities[-1] == pytest.approx(result["singles"]["big"]["quality"])


def test_map_command_needs_a_measured_library(tmp_path: Path, capsys: Any) -> None:
    assert main(["map", "--library", str(write_library(tmp_path))]) == 2
    assert "needs router.outcomes" in capsys.readouterr().err


def test_online_learning_over_a_hand_written_map_is_refused(tmp_path: Path) -> None:
    settings = {**library_data()["router"], "online": {}}  # the small library's hand-written map
    with pytest.raises(ConfigError, match=r"router.online: needs router.trained"):
        load_library(write_library(tmp_path, router=settings))
