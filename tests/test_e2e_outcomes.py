"""End to end, real experts and real suite data: ``coserve outcomes`` on HumanEval (the real sandbox
runs the expert's program) and MT-Bench (a real expert judges), through the real engine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from coserve.cli import main
from coserve.config import load_library
from coserve.outcomes.suites import HumanEval, Item, MTBench

pytestmark = pytest.mark.e2e


def _one_expert_library(tmp_path: Path) -> Path:
    """The default library cut down to its smallest expert (a few seconds per item on 2 cores)."""
    default = load_library()
    assert default.path is not None
    data = yaml.safe_load(default.path.read_text())
    data["experts"] = [e for e in data["experts"] if e["name"] == "general"]
    for key in ("outcomes", "priors"):  # the default map is solved for three experts: write this one's
        data["router"].pop(key, None)
    data["router"]["map"] = dict.fromkeys(default.categories, "general")
    data["router"]["fallback"]["expert"] = "general"
    data["categories"] = str(default.path.parent / data["categories"])
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _passes(answer: str, item: Item) -> bool:
    """Whether the answer passes the task's tests, found without the suite's grader: its first
    fenced block (or all of it) after the task's stub, the tests, then ``check``, in a plain child."""
    fields = item.fields
    block = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", answer, re.DOTALL)
    code = block.group(1) if block else answer
    whole = re.search(rf"^\s*def {fields['entry_point']}\(", code, re.MULTILINE)
    head = fields["prompt"] + ("    pass\n\n" if whole else "")
    program = f"{head}{code}\n\n{fields['test']}\n\ncheck({fields['entry_point']})\n"
    try:
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def test_humaneval_and_mtbench_on_a_real_expert(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    graded: list[tuple[str, str, Item, Any]] = []  # (suite, answer or verdict, item, score or error)

    def spy(suite: type[HumanEval] | type[MTBench]) -> None:
        original: Callable[..., Any] = suite.grade

        def grade(self: Any, answer: str, item: Item) -> Any:
            try:
                result = original(self, answer, item)
            except ValueError as exc:
                graded.append((self.name, answer, item, exc))
                raise
            graded.append((self.name, answer, item, result))
            return result

        monkeypatch.setattr(suite, "grade", grade)

    spy(HumanEval)
    spy(MTBench)
    library = _one_expert_library(tmp_path)
    out = tmp_path / "o.jsonl"
    common = ["outcomes", "--library", str(library), "--limit", "1", "--out", str(out), "--max-tokens", "96"]
    assert main([*common, "--suite", "humaneval"]) == 0
    assert main([*common, "--suite", "mtbench", "--judge", "general", "--routed"]) == 0
    printed = capsys.readouterr().out
    assert "items written 1" in printed
    code, chat = (json.loads(line) for line in out.read_text().splitlines())
    assert code["id"].startswith("humaneval-") and code["category"] == "code"
    ((_, answer, item, _),) = [g for g in graded if g[0] == "humaneval"]
    assert code["scores"]["general"] == (1.0 if _passes(answer, item) else 0.0)
    assert 0 < code["tokens"]["general"] <= 96
    signals = code["signals"]["general"]  # real log-probabilities of the answer's tokens (the cascade's check)
    assert signals["tokens"] == code["tokens"]["general"] and signals["min_logprob"] <= signals["mean_logprob"] <= 0
    assert signals["code_asked"] is True  # the HumanEval prompt holds the stub's def (coserve.router.verify)
    assert chat["id"].startswith("mtbench-") and chat["judge"] == "general"
    assert chat["routed_expert"] == "general"
    # Each verdict's rating, read here from the "[[n]]" the judge prompt asks for; the 135M judge
    # may not follow the format: then the grader's own reading, or the error saying there is none.
    verdicts = [(text, result) for suite, text, _, result in graded if suite == "mtbench"]
    for text, result in verdicts:
        asked = re.findall(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", text)
        if asked:
            assert result == float(asked[-1]) / 10
        elif not isinstance(result, Exception):
            assert re.search(rf"(?<![\d.]){result * 10:g}(?![\d])", text), (text, result)
    scores = [r for _, r in verdicts if not isinstance(r, Exception)]
    for column in ("general", "routed"):
        if column in chat["scores"]:
            assert chat["scores"][column] in scores
        else:
            assert "no [[rating]]" in chat["errors"][column]
            assert any(isinstance(r, ValueError) and "no [[rating]]" in str(r) for _, r in verdicts)
