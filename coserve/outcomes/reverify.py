"""Replay the verifiers on recorded answers: recompute the text-based signals of outcome rows that
kept their prompt (``--with-prompts``) and answer texts (``--keep-text``), without generating again.

The log-probability, length, finish and confidence signals are the recorded ones; the verifier's
verdicts (coserve.router.verify) and the examples' (coserve.router.examples, run in the sandbox when
``run_examples``) are computed afresh by the same code the live cascade runs. A row without a prompt
or without an expert's text keeps that expert's signals as they were. This module knows nothing
about suites, graders or the engine.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from coserve.router.examples import examples_passed, prompt_examples
from coserve.router.verify import verdicts

__all__ = ["reverify_row"]


def reverify_row(row: Mapping[str, Any], run_examples: bool = False) -> dict[str, Any]:
    """A copy of ``row`` with each expert's text signals recomputed from its recorded answer."""
    out = copy.deepcopy(dict(row))
    prompt, texts = row.get("prompt"), row.get("texts") or {}
    if not isinstance(prompt, str):
        return out
    examples = sum(e.want is not None for e in prompt_examples(prompt)) or None
    for expert, signals in out.get("signals", {}).items():
        text = texts.get(expert)
        if not isinstance(text, str):
            continue
        verdict = verdicts(prompt, text)
        signals.update(
            code_asked=verdict.code_asked,
            code_parses=verdict.code_parses,
            function_defined=verdict.function_defined,
            number_last=verdict.number_last,
            examples=examples,
            examples_passed=examples_passed(prompt, text) if run_examples and examples else None,
        )
    return out
