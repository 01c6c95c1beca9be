"""``coserve eval-trained --router A --router B``: two saved routers scored on the same held-out prompts, with
the paired difference B - A and its bootstrap interval; and ``--csv`` on eval and eval-trained."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_eval_harness import write_separable
from test_eval_trained import _held_out
from test_train_cli import argv

from coserve.cli import main


def _train(tmp_path: Path, name: str, budget: str, drop: str | None = None) -> Path:
    if drop:
        (tmp_path / f"{name}-data").mkdir()
    data, experts = write_separable(tmp_path / f"{name}-data" if drop else tmp_path)
    if drop:  # the same prompts, one expert fewer
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        for row in rows:
            row["scores"].pop(drop)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / name
    assert (
        main(argv("train", data, experts, "--out", str(out), "--budget-params", budget, "--router", "map-logistic"))
        == 0
    )
    return out


@pytest.fixture
def routers(tmp_path: Path, cache: Path) -> tuple[Path, Path]:
    """A map router at 6 B (chat -> small, code -> big: right on every prompt) and one at 1 B (small alone)."""
    return _train(tmp_path, "at6", "6"), _train(tmp_path, "at1", "1")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_router_against_itself_differs_by_nothing(routers: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = routers
    out = tmp_path / "same.json"
    args = [
        "eval-trained",
        "--router",
        str(a),
        "--router",
        str(a),
        "--test",
        str(_held_out(tmp_path)),
        "--json",
        str(out),
    ]
    assert main(args) == 0
    d = json.loads(out.read_text())["difference"]
    assert d["quality"] == {"difference": 0.0, "interval_95": [0.0, 0.0]}
    assert d["avg_params_b"] == {"difference": 0.0, "interval_95": [0.0, 0.0]}
    assert d["chose_differently"] == 0.0 and d["n"] == 40


def test_the_cheaper_router_loses_quality_and_cost_by_known_amounts(
    routers: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = routers
    out, tables = tmp_path / "ab.json", tmp_path / "tables"
    held = str(_held_out(tmp_path))
    args = [
        "eval-trained",
        "--router",
        str(a),
        "--router",
        str(b),
        "--test",
        held,
        "--json",
        str(out),
        "--csv",
        str(tables),
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert [r["router"]["budget"] for r in report["routers"]] == [6.0, 1.0]
    assert [r["router"]["quality"] for r in report["routers"]] == [1.0, 0.5]
    d = report["difference"]
    # B sends code to small (0) where A sent it to big (1): -1 on half the prompts, and 9 B less there
    assert d["quality"]["difference"] == -0.5 and d["avg_params_b"]["difference"] == -4.5
    low, high = d["quality"]["interval_95"]
    assert -0.75 < low < -0.5 < high < -0.25  # below zero: B is worse beyond the luck of the prompts
    assert d["chose_differently"] == 0.5
    assert "decisions" not in report["routers"][0] and report["meta"]["router_dirs"] == [str(a), str(b)]
    printed = capsys.readouterr().out
    assert (
        f"B - A quality: -0.500 [{low:+.3f}, {high:+.3f}]" in printed and "chose differently on 50.0% of 40" in printed
    )
    # the CSVs say what the report says
    diff = {row["figure"]: row for row in _rows(tables / "trained-difference.csv")}
    assert float(diff["quality"]["b_minus_a"]) == -0.5 and float(diff["quality"]["interval_low"]) == low
    assert float(diff["chose_differently"]["b_minus_a"]) == 0.5 and diff["chose_differently"]["interval_low"] == ""
    scores = _rows(tables / "trained-scores.csv")
    assert [r["name"] for r in scores] == ["router A (map-logistic)", "router B (map-logistic)", "small", "mid", "big"]
    assert [float(r["quality"]) for r in scores] == [1.0, 0.5, 0.5, 0.6, 0.75]
    margins = _rows(tables / "trained-margins.csv")
    m = report["routers"][1]["best_single"]
    cells = [m["expert"], m["margin"], *m["interval_95"]]
    assert list(margins[2].values()) == ["router B", "best_single", *map(str, cells)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("experts", "two routers are compared on the same experts"),
        ("three", "--router given 3 times"),
        ("lacks", "'mid' is scored on 0 of 40 rows"),
        ("csv_file", "--csv"),
    ],
)
def test_a_comparison_that_cannot_be_made_is_one_line_and_nothing_is_written(
    routers: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, message: str
) -> None:
    a, b = routers
    if change == "experts":
        b = _train(tmp_path, "nomid", "6", drop="mid")
        capsys.readouterr()  # training's notes
    out, tables = tmp_path / "ab.json", tmp_path / "tables"
    held = _held_out(tmp_path, drop="mid" if change == "lacks" else None)
    args = ["eval-trained", "--router", str(a), "--router", str(b), "--test", str(held), "--json", str(out)]
    args += ["--router", str(a)] if change == "three" else []
    if change == "csv_file":
        tables.write_text("a file")
    args += ["--csv", str(tables)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("coserve: error: ") and message in err and "Traceback" not in err
    assert change == "lacks" or err.count("\n") == 1  # (a file's bad rows are listed, as for one router)
    assert not out.exists() and (change == "csv_file" or not tables.exists())


def test_eval_writes_its_printed_tables_as_csv(tmp_path: Path, cache: Path) -> None:
    data, experts = write_separable(tmp_path)
    out, tables = tmp_path / "r.json", tmp_path / "csv"
    args = argv("eval", data, experts, "--folds", "3", "--routers", "map-logistic,prompt-knn", "--json", str(out))
    assert main([*args, "--csv", str(tables)]) == 0
    report = json.loads(out.read_text())
    base = _rows(tables / "eval-baselines.csv")
    assert [r["name"] for r in base] == list(report["baselines"])
    assert [float(r["quality"]) for r in base] == [b["quality"] for b in report["baselines"].values()]
    routers = {r["router"]: r for r in _rows(tables / "eval-routers.csv")}
    assert set(routers) == {"map-logistic", "prompt-knn"}
    for name, row in routers.items():
        m = report["routers"][name]["metrics"]
        headline = m["margin_at_best_single_budget"]
        assert float(row["quality_at_best_single_budget"]) == m["quality_at_best_single_budget"]
        assert float(row["auc"]) == m["auc_params"] and row["best_single"] == headline["expert"] == "big"
        assert [float(row["margin"]), float(row["interval_low"]), float(row["interval_high"])] == [
            headline["margin"], *headline["interval_95"]
        ]  # fmt: skip
    assert main([*args, "--csv", str(tables), "--no-intervals"]) == 0  # the same tables, without the intervals
    plain = json.loads(out.read_text())
    assert (
        plain["meta"]["intervals"] is None
        and "margin_at_best_single_budget" not in plain["routers"]["prompt-knn"]["metrics"]
    )
    assert {r["router"]: r["interval_low"] for r in _rows(tables / "eval-routers.csv")} == dict.fromkeys(routers, "")
    assert main([*argv("eval", data, experts, "--folds", "3", "--json", str(out)), "--csv", str(out)]) == 2  # a file
