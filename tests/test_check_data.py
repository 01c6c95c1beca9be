"""coserve check-data: an outcome file's summary and bad rows, before any work (nothing embedded)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_eval_harness import write_separable

from coserve.cli import main


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, dict]:
    out = Path(args[0]).parent / "check.json"
    rc = main(["check-data", *args, "--json", str(out)])
    return rc, capsys.readouterr().out, json.loads(out.read_text())


def test_a_clean_file_is_counted_exactly(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, experts = write_separable(tmp_path)  # 60 rows, chat and code alternating, small/mid/big
    rc, out, report = check(capsys, str(data), "--experts", str(experts))
    assert rc == 0
    (summary,) = report["files"]
    assert (summary["rows"], summary["usable_rows"], summary["distinct_prompts"]) == (60, 60, 60)
    assert summary["categories"] == {"chat": 30, "code": 30}
    assert summary["experts"] == {
        "small": {"rows": 60, "mean": 0.5},
        "mid": {"rows": 60, "mean": 0.6},
        "big": {"rows": 60, "mean": 0.75},
    }
    assert summary["score_range"] == [0.0, 1.0]
    assert summary["cells"] == {c: {"small": 30, "mid": 30, "big": 30} for c in ("code", "chat")}
    assert summary["bad_rows"] == summary["empty_cells"] == summary["thin_cells"] == []
    assert summary["refused"] is None
    fit = {command: verdict["fit"] for command, verdict in summary["fit"].items()}
    assert fit == {
        "train": True,
        "eval (--folds 5)": True,
        "bench adapt": True,
        "compare": False,
        "train-check, eval --cascade": False,
    }
    assert f"{data}: 60 rows, 60 usable, 0 bad; 60 distinct prompts; scores 0.000 to 1.000" in out
    assert not (cache / "embeddings").exists()


BAD = {
    "id": ({"prompt": "p", "category": "code", "scores": {"a": 1, "b": 0}}, "missing or non-string id"),
    "dup": (
        {"id": "r0", "prompt": "p", "category": "code", "scores": {"a": 1, "b": 0}},
        "duplicate id (first on line 1)",
    ),
    "prompt": ({"id": "x", "prompt": " ", "category": "code", "scores": {"a": 1, "b": 0}}, "empty prompt"),
    "category": ({"id": "x", "prompt": "p", "scores": {"a": 1, "b": 0}}, "missing category"),
    "scores": ({"id": "x", "prompt": "p", "category": "code", "scores": [1, 0]}, "scores must be a mapping"),
    "missing": ({"id": "x", "prompt": "p", "category": "code", "scores": {"a": 1}}, "missing scores for experts ['b']"),
    "nan": (
        {"id": "x", "prompt": "p", "category": "code", "scores": {"a": "hi", "b": 0}},
        "score of 'a' is not a number",
    ),
    "range": (
        {"id": "x", "prompt": "p", "category": "code", "scores": {"a": 2, "b": 0}},
        "score of 'a' out of [0, 1]: 2",
    ),
    "json": ("{not json", "malformed JSON"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_row_is_listed_and_refused(
    kind: str, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [
        {"id": f"r{i}", "prompt": f"prompt {i}", "category": "code" if i % 2 else "chat", "scores": {"a": 1, "b": 0}}
        for i in range(12)
    ]
    row, why = BAD[kind]
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps(r) + "\n" for r in good) + (row if isinstance(row, str) else json.dumps(row)) + "\n"
    )
    rc, out, report = check(capsys, str(data))
    assert rc == 2
    (bad,) = report["files"][0]["bad_rows"]
    assert bad["line"] == 13 and why in bad["reason"]
    assert bad["field"] == {"dup": "id", "missing": "scores", "nan": "scores", "range": "scores", "json": ""}.get(
        kind, kind
    )
    assert f"bad row {data}:13: " in out and why in out
    # train refuses the same row, listed the same way
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps({"a": {"params_b": 1}, "b": {"params_b": 2}}))
    rc = main(["train", "--data", str(data), "--experts", str(experts), "--out", str(tmp_path / "r")])
    assert rc == 2 and f"  {bad['listed']}\n" in capsys.readouterr().err


def test_thin_and_empty_cells_and_experts_mismatch(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"id": f"c{i}", "prompt": f"code {i}", "category": "code", "scores": {"a": 1, "b": 0.5}} for i in range(20)]
    rows += [{"id": f"m{i}", "prompt": f"math {i}", "category": "math", "scores": {"a": 0, "b": 1}} for i in range(4)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps({"a": {"params_b": 1}, "c": {"params_b": 3}}))
    rc, out, report = check(capsys, str(data), "--experts", str(experts), "--thin", "5")
    assert rc == 2  # b has no entry in the experts file: train, eval and bench adapt refuse it
    summary = report["files"][0]
    assert summary["thin_cells"] == [["math", "a", 4], ["math", "b", 4]]
    assert summary["empty_cells"] == [["code", "c"], ["math", "c"]]
    assert summary["experts_file"]["not_scored"] == ["c"]
    assert summary["experts_file"]["without_entry"] == ["b"]
    assert "no entry for ['b']" in summary["refused"]
    assert "thin cells (< 5 rows): math x a (4), math x b (4)" in out
    experts.write_text(json.dumps({"a": {"params_b": 1}, "b": {"params_b": 2}}))
    rc, _, report = check(capsys, str(data), "--experts", str(experts))  # default --thin 10
    assert rc == 0 and report["files"][0]["thin_cells"] == [["math", "a", 4], ["math", "b", 4]]


def test_verdicts_name_what_each_command_needs(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": f"r{i}", "prompt": f"p {i % 3}", "category": "chat", "scores": {"a": 1, "routed": 0}} for i in range(6)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, report = check(capsys, str(data))
    assert rc == 0  # readable, every row usable: as held-out data it is fine
    fit = report["files"][0]["fit"]
    assert report["files"][0]["distinct_prompts"] == 3
    assert not fit["train"]["fit"] and "3 distinct prompts" in fit["train"]["why"]
    assert fit["compare"]["fit"] and "'routed' is scored like an expert" in fit["compare"]["why"]


def test_a_missing_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check-data", str(tmp_path / "none.jsonl")])
    assert rc == 2
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'none.jsonl'}: refused: outcome file not found: {tmp_path / 'none.jsonl'}" in out
    missing = tmp_path / "none.jsonl"
    assert err == f"coserve: {missing}: the commands refuse it: outcome file not found: {missing}\n"


def test_thirty_thousand_rows_take_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "big.jsonl"
    with data.open("w") as handle:
        for i in range(30_000):
            scores = {"a": (i % 7) / 6, "b": (i % 5) / 4, "c": (i % 3) / 2}
            handle.write(
                json.dumps({"id": f"q{i}", "prompt": f"prompt {i}", "category": f"c{i % 4}", "scores": scores}) + "\n"
            )
    started = time.perf_counter()
    rc, _, report = check(capsys, str(data))
    assert rc == 0 and report["files"][0]["usable_rows"] == 30_000
    assert (
        time.perf_counter() - started < 20
    )  # 2.5 to 5 s a fresh process on one shared core (docs/data/check-data-30k.json)


def test_files_scoring_different_experts_are_named(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = write_separable(tmp_path)  # small, mid, big
    held = tmp_path / "held.csv"
    held.write_text("id,prompt,category,score:small,score:mid\nh1,hello there,chat,1,0.5\n")
    rc, out, report = check(capsys, str(data), str(held))
    assert rc == 0
    assert report["not_scored_in"] == {"big": [str(held)]}
    assert f"'big' is not scored in {held}" in out
    verdicts = report["files"][1]["fit"]
    assert (
        verdicts["train-check, eval --cascade"]["why"]
        == "signals are read from JSONL only, as coserve outcomes writes them"
    )


def test_a_file_without_prompts_names_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # coserve outcomes without --with-prompts: no row is usable; "no usable rows" alone did not say why
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"r{i}", "category": "c", "scores": {"a": 1, "b": 0}}) + "\n" for i in range(3))
    )
    rc, _, report = check(capsys, str(data))
    assert rc == 2
    rows = "".join(f"  {data}:{i + 1}: r{i}: empty prompt\n" for i in range(3))
    assert report["files"][0]["refused"] == f"3 bad rows in {data}:\n{rows}no usable rows"
