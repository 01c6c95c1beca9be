"""Outcome data loading: every bad-input kind reported with its line, skip vs refuse, CSV, folds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from coserve.errors import ConfigError
from coserve.eval.data import embed_cached, grouped_folds, load_costs, load_outcomes
from coserve.router.embed import HashingEmbedder


def good(i: int, **overrides: object) -> dict:
    row = {"id": f"r{i}", "prompt": f"prompt number {i}", "category": "math", "scores": {"a": 0.5, "b": 1.0}}
    row.update(overrides)
    return row


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_LINES = [
    json.dumps(good(0)),  # line 1: fine
    json.dumps(good(1, scores={"a": 0.5})),  # 2: missing expert b
    json.dumps(good(2, scores={"a": float("nan"), "b": 1.0})),  # 3: NaN (json.dumps writes NaN)
    json.dumps(good(3, scores={"a": 1.5, "b": 1.0})),  # 4: out of range
    json.dumps(good(4, category="poetry")),  # 5: unknown category
    json.dumps(good(5, prompt="   ")),  # 6: empty prompt
    json.dumps(good(0)),  # 7: duplicate id
    '{"id": "r8", "prompt": ',  # 8: malformed JSON
    json.dumps(good(9)),  # 9: fine
]
EXPECTED = {
    2: "missing scores",
    3: "not a number",
    4: "out of [0, 1]",
    5: "unknown category",
    6: "empty prompt",
    7: "duplicate id",
    8: "malformed JSON",
}


def test_every_bad_kind_reported_with_its_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", BAD_LINES)
    outcomes, problems = load_outcomes(path, experts=["a", "b"], categories=["math", "code"], on_bad="skip")
    assert outcomes.ids == ("r0", "r9")
    assert {p.line: p.reason for p in problems}.keys() == EXPECTED.keys()
    for p in problems:
        assert EXPECTED[p.line] in p.reason
        assert p.file == str(path)
    assert outcomes.scores.dtype == np.float32 and outcomes.scores.shape == (2, 2)


def test_refuse_raises_listing_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", BAD_LINES)
    with pytest.raises(ConfigError) as info:
        load_outcomes(path, experts=["a", "b"], categories=["math"], on_bad="refuse")
    for line in EXPECTED:
        assert f"{path}:{line}:" in info.value.message
    assert "--on-bad skip" in info.value.message  # the way out, as a command-line user types it


def test_experts_inferred_and_missing_ones_reported(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good(0)), json.dumps(good(1, scores={"b": 0.2}))])
    outcomes, problems = load_outcomes(path, on_bad="skip")
    assert outcomes.experts == ("a", "b") and [p.line for p in problems] == [2]


def test_csv_equivalent_to_jsonl(tmp_path: Path) -> None:
    rows = [good(i, scores={"a": i / 10, "b": 1 - i / 10}) for i in range(5)]
    jsonl = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    with (tmp_path / "d.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "category", "score:a", "score:b", "cost:a"])
        for r in rows:
            writer.writerow([r["id"], r["prompt"], r["category"], r["scores"]["a"], r["scores"]["b"], "0.1"])
        writer.writerow(["bad", "x", "math", "", "0.3", ""])  # line 7: missing score of a
    from_json, _ = load_outcomes(jsonl)
    from_csv, problems = load_outcomes(tmp_path / "d.csv", on_bad="skip")
    assert from_csv.ids == from_json.ids and from_csv.prompts == from_json.prompts
    assert from_csv.experts == from_json.experts
    np.testing.assert_array_equal(from_csv.scores, from_json.scores)
    assert [p.line for p in problems] == [7]


def test_costs_with_nulls(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    path.write_text(
        json.dumps(
            {
                "a": {"params_b": None, "input_price": 10, "output_price": 30},
                "b": {"params_b": 7, "input_price": None, "output_price": None},
            }
        )
    )
    costs = load_costs(path)
    assert costs.names == ("a", "b")
    assert np.isnan(costs.params_b[0]) and costs.params_b[1] == 7
    assert costs.price[0] == 20 and np.isnan(costs.price[1])
    assert load_costs(path).aligned(["b", "a"]).names == ("b", "a")
    with pytest.raises(ConfigError):
        costs.aligned(["c"])


def test_grouped_folds_keep_identical_prompts_together_and_are_deterministic() -> None:
    base = [f"question {i % 13}" for i in range(60)]
    prompts = [p.upper() if i % 3 == 0 else "  " + p.replace(" ", "   ") for i, p in enumerate(base)]
    folds = grouped_folds(prompts, 4, seed=7)
    assert len(folds) == 4
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen.tolist()) == list(range(60))
    for train, test in folds:
        assert not set(train) & set(test)
        train_keys = {base[i] for i in train}
        assert not train_keys & {base[i] for i in test}
    again = grouped_folds(prompts, 4, seed=7)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))
    assert any(
        (a[1] != b[1]).any() or len(a[1]) != len(b[1])
        for a, b in zip(folds, grouped_folds(prompts, 4, seed=8), strict=True)
    )


def test_embedding_cache_round_trip(tmp_path: Path) -> None:
    prompts = ["hello there", "solve x"]
    first = embed_cached(prompts, HashingEmbedder(), tmp_path)
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 1
    np.testing.assert_array_equal(embed_cached(prompts, HashingEmbedder(), tmp_path), first)


def test_a_refusal_counts_then_lists_one_bad_row_a_line_up_to_the_cap(tmp_path: Path) -> None:
    # Session 12's walk: the 20 listed rows were joined with "; " into one long line.
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good(i, scores={"a": 2.0, "b": 1.0})) for i in range(25)])
    with pytest.raises(ConfigError) as info:
        load_outcomes(path, experts=["a", "b"])
    lines = info.value.message.splitlines()
    assert lines[0] == f"25 bad rows in {path}:"
    reason = "score of 'a' out of [0, 1]: 2.0"
    assert lines[1:21] == [f"  {path}:{i + 1}: r{i}: {reason}" for i in range(20)]
    assert lines[21:] == ["  ... and 5 more", "drop them with on_bad='skip' (on the command line: --on-bad skip)"]


def test_one_bad_score_of_an_added_expert_is_one_row_a_line(tmp_path: Path) -> None:
    from coserve.eval.data import load_expert_scores

    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good(0)), json.dumps(good(1, scores={"b": 0.2}))])
    with pytest.raises(ConfigError) as info:
        load_expert_scores(path, "a")
    assert info.value.message == f"1 bad row in {path}:\n  {path}:2: r1: no valid score of 'a' in [0, 1]"
