"""HumanEval (a fenced child process runs the tests), MT-Bench (a judge expert rates), the routed
column and held-out samples of ``coserve outcomes``.

Suite files are written into tmp_path (no data package); the fake experts answer
``"<expert> says: <prompt words...>"``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.outcomes.runner import run_outcomes
from coserve.outcomes.suites import Graded, HumanEval, MTBench, Suite, extract_code
from coserve.sandbox import network_isolation, run_python
from tests.test_outcomes import EXPERTS, MMLU, lines, mmlu_row, write_jsonl

TASK = {
    "task_id": "HumanEval/0",
    "prompt": 'import math\n\n\ndef root(x: float) -> float:\n    """The square root of x."""\n',
    "entry_point": "root",
    "canonical_solution": "    return math.sqrt(x)\n",
    "test": "def check(candidate):\n    assert candidate(9.0) == 3.0\n    assert candidate(2.25) == 1.5\n",
}


@pytest.fixture
def humaneval(tmp_path: Path) -> HumanEval:
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(TASK) + "\n").encode()))
    return HumanEval(path)


def run(engine: Engine, suite: Suite, out: Path, **kwargs: Any) -> Any:
    return asyncio.run(run_outcomes(engine, [(suite, i) for i in suite.load()], out, progress=False, **kwargs))


# -- the sandbox --------------------------------------------------------------------------------
def test_sandbox_outcomes() -> None:
    assert run_python("print('hi')").passed
    failed = run_python("raise SystemExit('bad answer')")
    assert failed.status == "failed" and "bad answer" in failed.detail
    assert run_python("while True:\n    pass\n", timeout_s=1).status == "timeout"


def test_sandbox_fences() -> None:
    # No network: neither through the socket module nor by any other route.
    blocked = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))")
    assert blocked.status == "failed" and "network access is disabled" in blocked.detail
    # A memory bomb is stopped by the address-space limit, not by the machine.
    bomb = run_python("x = bytearray(4 * 2**30)", memory_bytes=512 * 2**20)
    assert bomb.status == "failed" and "MemoryError" in bomb.detail
    # A fresh, empty working directory and environment; files written there vanish with it.
    probe = run_python(
        "import os, sys\nassert os.listdir('.') == ['program.py'], os.listdir('.')\n"
        "assert 'COSERVE_CACHE' not in os.environ\nopen('left.txt', 'w').write('x')\n"
    )
    assert probe.passed, probe.detail


def test_network_namespace_is_used_where_the_kernel_allows_one() -> None:
    prefix = network_isolation()
    if not prefix:
        pytest.skip("no user network namespaces here: the socket guard alone applies")
    # Inside the namespace there is no route anywhere, even with the socket module restored.
    program = "import importlib, socket\nimportlib.reload(socket)\nsocket.create_connection(('1.1.1.1', 53), timeout=2)"
    result = run_python(program)
    assert result.status == "failed" and ("unreachable" in result.detail or "Errno" in result.detail)


# -- HumanEval ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("```python\nimport math\n\ndef root(x):\n    return math.sqrt(x)\n```", 1.0),  # the whole function
        ("Here you go:\n```py\ndef root(x):\n    return x ** 0.5\n```\nDone.", 1.0),
        ("    return math.sqrt(x)\n", 1.0),  # the body alone continues the stub
        ("```python\ndef root(x):\n    return x / 2\n```", 0.0),  # wrong
        ("```python\ndef root(x):\n    return (\n```", 0.0),  # does not parse
        ("I cannot help with that.", 0.0),
        ("", 0.0),
        ("```python\ndef root(x):\n    return math.sqrt(x)", 1.0),  # cut off by the token cap: still graded
    ],
)
def test_humaneval_grades_by_running_the_tests(humaneval: HumanEval, answer: str, score: float) -> None:
    (item,) = humaneval.load()
    assert humaneval.grade(answer, item) == score
    assert humaneval.category(item) == "code" and TASK["prompt"] in humaneval.prompt(item)


def test_humaneval_time_out_scores_zero_with_a_note(humaneval: HumanEval, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HumanEval, "timeout_s", 1.0)
    (item,) = humaneval.load()
    graded = humaneval.grade("```python\ndef root(x):\n    while True:\n        pass\n```", item)
    assert isinstance(graded, Graded) and graded.score == 0.0 and "time-out" in graded.note


def test_extract_code_takes_the_first_block() -> None:
    assert extract_code("a\n```python\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("plain text") == "plain text"


def test_humaneval_run_notes_time_outs(
    make_engine: Callable[..., Engine], humaneval: HumanEval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake's echo is not Python: every expert scores 0 and the row says why nothing passed.
    out = tmp_path / "he.jsonl"
    summary = run(make_engine(), humaneval, out)
    (row,) = lines(out)
    assert row["category"] == "code" and row["scores"] == dict.fromkeys(EXPERTS, 0.0)
    assert summary.grader_notes == 0 and summary.grader_errors == 0
    # A grader that times out is noted per expert and counted; the run completes.
    monkeypatch.setattr(HumanEval, "grade", lambda self, answer, item: Graded(0.0, "time-out: no exit within 1 s"))
    out2 = tmp_path / "he2.jsonl"
    summary = run(make_engine(), humaneval, out2)
    (row,) = lines(out2)
    assert row["notes"] == dict.fromkeys(EXPERTS, "time-out: no exit within 1 s") and summary.grader_notes == 3
    assert "time-outs) 3" in summary.table(EXPERTS)


# -- MT-Bench -------------------------------------------------------------------------------------
def write_mtbench(tmp_path: Path, template: str, system: str = "You rate answers.") -> MTBench:
    data = tmp_path / "fastchat" / "llm_judge" / "data"
    questions = write_jsonl(
        data / "mt_bench" / "question.jsonl",
        [
            {"question_id": 81, "category": "writing", "turns": ["Write a haiku", "Now another"]},
            {"question_id": 111, "category": "math", "turns": ["What is 2+2"]},
            {"question_id": 999, "category": "coding", "turns": []},  # no first turn: not an item
        ],
    )
    prompts = [
        {"name": name, "type": "single", "system_prompt": system, "prompt_template": template}
        for name in ("single-v1", "single-math-v1")
    ]
    write_jsonl(data / "judge_prompts.jsonl", prompts)
    write_jsonl(
        data / "mt_bench" / "reference_answer" / "gpt-4.jsonl",
        [{"question_id": 111, "choices": [{"index": 0, "turns": ["four"]}]}],
    )
    return MTBench(questions)


def test_mtbench_judge_messages_use_the_packages_prompt(tmp_path: Path) -> None:
    suite = write_mtbench(tmp_path, "Q: {question} A: {answer} REF: {ref_answer_1}")
    suite.prepare()
    writing, maths = suite.load()
    assert [suite.category(writing), suite.category(maths)] == ["writing", "math"]
    assert suite.judge_messages("ok", writing) == [
        ("system", "You rate answers."),
        ("user", "Q: Write a haiku A: ok REF: "),
    ]
    assert suite.judge_messages("4", maths)[1][1] == "Q: What is 2+2 A: 4 REF: four"  # maths has a reference
    assert suite.grade("Sound reasoning. Rating: [[7]]", writing) == 0.7
    assert suite.grade("[[3]] at first, then [[8.5]]", writing) == 0.85  # the last verdict counts
    # Small judges bend the format: "[7]", "Rating: 7", "7/10" are read, "[[x]]" first.
    assert suite.grade("Rating: [6]", writing) == 0.6
    assert suite.grade("I would give it a rating of 4.", writing) == 0.4
    assert suite.grade("Overall 9 out of 10.", writing) == 0.9
    assert suite.grade("Score 3/10 but [[5]]", writing) == 0.5
    for verdict in ("The answer is good.", "[[0]]", "[[11]]", "Rating: 12"):
        with pytest.raises(ValueError):
            suite.grade(verdict, writing)


def test_mtbench_run_is_judged_by_the_named_expert(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    # The fake judge echoes the prompt, whose template carries the verdict: "[[8]]" -> 0.8.
    verdicts: list[str] = []

    class Recording(MTBench):
        def grade(self, answer: str, item: Any) -> float:
            verdicts.append(answer)
            return super().grade(answer, item)

    suite = write_mtbench(tmp_path, "[[8]] {answer}")
    suite.__class__ = Recording
    out = tmp_path / "mt.jsonl"
    summary = run(make_engine(), suite, out, judge="big")
    rows = lines(out)
    assert len(rows) == 2 and all(r["judge"] == "big" for r in rows)
    assert all(r["scores"] == dict.fromkeys(EXPERTS, 0.8) for r in rows)
    assert summary.grader_errors == 0
    # Every answer (2 items x 3 experts) was judged by "big", and the verdict was about that answer.
    prefix = "big says: You rate answers. [[8]] "  # the judge's echo of its system and user messages
    assert len(verdicts) == 6 and all(v.startswith(prefix) for v in verdicts)
    assert sorted(v[len(prefix) :].split()[0] for v in verdicts) == sorted([*EXPERTS, *EXPERTS])


def test_mtbench_verdict_without_rating_is_recorded_per_item(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    suite = write_mtbench(tmp_path, "no verdict here {answer}")
    out = tmp_path / "mt.jsonl"
    summary = run(make_engine(), suite, out, judge="small")
    rows = lines(out)
    assert len(rows) == 2 and all(r["scores"] == {} for r in rows)
    assert all("no [[rating]]" in r["errors"]["coder"] for r in rows)
    assert summary.grader_errors == 6 and summary.written == 2


def test_mtbench_needs_a_judge_from_the_library(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    suite = write_mtbench(tmp_path, "[[8]] {answer}")
    out = tmp_path / "mt.jsonl"
    with pytest.raises(ConfigError, match="--judge"):
        run(make_engine(), suite, out)
    with pytest.raises(ConfigError, match="'gpt-4' is not an expert of this library"):
        run(make_engine(), suite, out, judge="gpt-4")
    assert not out.exists()


def test_mtbench_broken_judge_prompts_stop_the_run_before_any_item(
    make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    suite = write_mtbench(tmp_path, "[[8]] {answer}")
    (suite.data_file().parent.parent / "judge_prompts.jsonl").write_text("{broken\n")
    with pytest.raises(ConfigError, match="unusable judge prompts"):
        run(make_engine(), suite, tmp_path / "mt.jsonl", judge="big")


# -- routed column and held-out samples ---------------------------------------------------------
def test_routed_column_records_who_answered(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    mmlu_file = write_jsonl(tmp_path / "mmlu.jsonl", [mmlu_row("Pick B", "B"), mmlu_row("Choose one", "D", "t2")])
    out = tmp_path / "routed.jsonl"
    summary = run(make_engine(), MMLU(mmlu_file), out, routed=True)
    for row in lines(out):
        assert row["routed_expert"] in EXPERTS
        # Greedy and deterministic: the routed answer scores what its expert's own answer scored.
        assert row["scores"]["routed"] == row["scores"][row["routed_expert"]]
    assert "routed" in summary.table([*EXPERTS, "routed"])


def test_exclude_leaves_training_ids_out_of_a_held_out_sample(tmp_path: Path) -> None:
    rows = [
        {"question": f"q{i}", **{f"answer_{x}": x for x in "abcd"}, "correct_answer": "A", "topic": "t"}
        for i in range(10)
    ]
    suite = MMLU(write_jsonl(tmp_path / "m.jsonl", rows))
    train = {i.id for i in suite.load(limit=4, seed=0)}
    held = {i.id for i in suite.load(limit=4, seed=0, exclude=train)}
    assert len(train) == len(held) == 4 and not train & held


def test_compare_routed_against_single_experts(make_engine: Callable[..., Engine], tmp_path: Path, capsys: Any) -> None:
    from coserve.cli import main
    from tests.conftest import write_library

    rows = [mmlu_row("Pick B", "B"), mmlu_row("Choose one", "D", "t2"), mmlu_row("write a python function", "A", "t3")]
    out = tmp_path / "routed.jsonl"
    run(make_engine(), MMLU(write_jsonl(tmp_path / "mmlu.jsonl", rows)), out, routed=True)
    # An item a column failed on is left out of every column (paired comparison).
    lines_ = out.read_text().splitlines()
    broken = json.loads(lines_[0])
    del broken["scores"]["coder"]
    out.write_text("\n".join([json.dumps(broken), *lines_[1:]]) + "\n")
    library = write_library(tmp_path)
    report = tmp_path / "cmp.json"
    assert main(["compare", "--library", str(library), "--data", str(out), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["items"] == 2 and result["left_out"] == 1
    params = {"small": 0.1, "coder": 0.5, "big": 1.5}
    kept = [json.loads(t) for t in lines_[1:]]
    routed = result["columns"]["routed"]
    assert routed["avg_params_b"] == pytest.approx(sum(params[r["routed_expert"]] for r in kept) / 2)
    assert routed["quality"] == pytest.approx(sum(r["scores"]["routed"] for r in kept) / 2)
    assert result["columns"]["big"]["avg_params_b"] == 1.5
    assert sum(result["routed_to"].values()) == 2 and "routed to:" in printed
    # A file without a routed column says how to make one.
    plain = tmp_path / "plain.jsonl"
    run(make_engine(), MMLU(write_jsonl(tmp_path / "m2.jsonl", rows)), plain)
    assert main(["compare", "--library", str(library), "--data", str(plain)]) == 2
    assert "coserve outcomes --routed" in capsys.readouterr().err


def test_a_verdict_without_rating_gets_a_second_turn(
    make_engine: Callable[..., Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake judge echoes its messages: the first verdict has no rating; the second turn (the
    # rating request, here carrying one) is read instead.
    monkeypatch.setattr(MTBench, "rating_request", "only the rating: [[6]]")
    monkeypatch.setattr(MTBench, "rating_max_tokens", 400)  # the fake echoes every turn before the last
    suite = write_mtbench(tmp_path, "no verdict here {answer}")
    out = tmp_path / "mt.jsonl"
    summary = run(make_engine(), suite, out, judge="big", max_tokens=4)  # short answers: short echoes
    rows = lines(out)
    assert [r["scores"] for r in rows] == [dict.fromkeys(EXPERTS, 0.6)] * 2, rows[0].get("errors")
    assert summary.grader_errors == 0


def test_run_examples_records_the_examples_signal(
    make_engine: Callable[..., Engine], tmp_path: Path, capsys: Any
) -> None:
    """A task whose prompt gives two doctest examples: the fake's echo is no code, so none passes when
    run; without --run-examples the count is recorded and the fraction is unknown."""
    task = {
        **TASK,
        "prompt": TASK["prompt"].replace(
            'root of x."""', 'root of x.\n    >>> root(9.0)\n    3.0\n    >>> root(0.0)\n    0.0\n    """'
        ),
    }
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(task) + "\n").encode()))
    off, on = tmp_path / "off.jsonl", tmp_path / "on.jsonl"
    run(make_engine(), HumanEval(path), off, keep_text=True)
    run(make_engine(), HumanEval(path), on, run_examples=True)
    (row_off,), (row_on,) = lines(off), lines(on)
    assert {(s["examples"], s["examples_passed"]) for s in row_off["signals"].values()} == {(2, None)}
    assert {(s["examples"], s["examples_passed"]) for s in row_on["signals"].values()} == {(2, 0.0)}
    assert set(row_off["texts"]) == set(EXPERTS) and "texts" not in row_on
