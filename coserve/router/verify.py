"""Verifier signals of an answer: what its text says about whether it does what the prompt asked,
known when it is generated and without a reference answer (the answer check's input beside the
log-probabilities, coserve.router.check).

    code_asked        -> the prompt asks for Python: it holds a ```python block or a ``def`` line
    code_parses       -> the answer's code (its first fenced block, else the whole answer when code
                         was asked) is valid Python (``ast.parse``); False without code
    function_defined  -> that code defines the function the prompt names (the last ``def`` of the
                         prompt), or any function when the prompt names none
    number_last       -> code was not asked and the answer's last non-empty line holds a number (the
                         form a maths answer ends in: "give the final number on the last line")

``extract_code`` is the extraction the HumanEval grader runs too (coserve.outcomes.suites), so the
check sees the code that would be run. This module knows nothing about experts, scores or suites.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass

__all__ = ["Verdicts", "extract_code", "verdicts"]

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python|py)\b", re.IGNORECASE)
_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.MULTILINE)
_NUMBER = re.compile(r"\d")


def extract_code(answer: str) -> str:
    """The Python in an answer: its first fenced block (a block cut off by the token cap counts), else
    the whole answer."""
    found = _FENCE.search(answer)
    return found.group(1) if found else answer


@dataclass(frozen=True)
class Verdicts:
    """The verifier signals of one answer (module doc)."""

    code_asked: bool
    code_parses: bool
    function_defined: bool
    number_last: bool


def _parsed(code: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in a model's code are not errors
            return ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def verdicts(prompt: str, answer: str) -> Verdicts:
    """The verifier signals of ``answer`` to ``prompt`` (the last user turn's text)."""
    asked_names = _DEF.findall(prompt)
    code_asked = bool(asked_names) or bool(_PYTHON_FENCE.search(prompt))
    fenced = _FENCE.search(answer) is not None
    tree = _parsed(extract_code(answer)) if (code_asked or fenced) and answer.strip() else None
    functions = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)) if tree else ()
    defined = {f.name for f in functions}
    function_defined = (asked_names[-1] in defined) if asked_names else bool(defined)
    lines = [line for line in answer.splitlines() if line.strip()]
    number_last = not code_asked and bool(lines) and _NUMBER.search(lines[-1]) is not None
    return Verdicts(code_asked, tree is not None, function_defined, number_last)
