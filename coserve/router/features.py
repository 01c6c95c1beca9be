"""Cheap prompt features, and an embedder that appends them to another embedder's vector.

Ten numbers a regular expression or a count gives in microseconds: length (characters, words,
lines, on a log scale), the share of digits and of operator characters, and markers of code, of
mathematics, of a multiple-choice question, of a question mark and of a doctest. Each is scaled to
be of order one on ordinary prompts, with fixed constants (no statistics of any data set), so the
same text always gives the same row. ``FeaturedEmbedder`` returns ``[embedding, features]``: the
first ``base.dim`` columns are the base embedder's unit vector, the rest are these features. It is
what the ``stack`` router is trained on (``coserve train`` records the embedder's name).
This module knows nothing about categories or experts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FEATURE_NAMES", "FeaturedEmbedder", "prompt_features"]

FEATURE_NAMES = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "code",
    "maths",
    "question_mark",
    "multiple_choice",
    "operator_share",
    "doctest",
)
_CODE = re.compile(r"def |```|return |import |\bclass\b|#include|function\s*\(|;\s*$", re.MULTILINE)
_MATHS = re.compile(r"\$|\\frac|\\\(|\^|\\sqrt|\\cdot|\\times")
_CHOICE = re.compile(r"\b[A-D][.)]\s|\([A-D]\)|\boptions\b|\bchoices\b", re.IGNORECASE)
_DOCTEST = re.compile(r'>>>|"""')
_OPERATORS = frozenset("=+-*/<>")


def _row(text: str) -> list[float]:
    chars = max(1, len(text))
    return [
        math.log1p(len(text)) / 8.0,
        math.log1p(len(text.split())) / 6.0,
        math.log1p(text.count("\n")) / 3.0,
        5.0 * sum(c.isdigit() for c in text) / chars,
        float(bool(_CODE.search(text))),
        float(bool(_MATHS.search(text))),
        float("?" in text),
        float(bool(_CHOICE.search(text))),
        10.0 * sum(c in _OPERATORS for c in text) / chars,
        float(bool(_DOCTEST.search(text))),
    ]


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """``[n, len(FEATURE_NAMES)]`` float32 features of each text."""
    return np.asarray([_row(t) for t in texts], dtype=np.float32).reshape(len(texts), len(FEATURE_NAMES))


class FeaturedEmbedder:
    """``base``'s embedding with the prompt features appended (``base.dim + 10`` columns)."""

    def __init__(self, base: Any):
        self.base = base
        self.name = f"{base.name}+features"
        self.dim = int(base.dim) + len(FEATURE_NAMES)

    def __getattr__(self, name: str) -> Any:  # count_tokens, tokenizer, ...: the base's, where it has them
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def extra(self, texts: Sequence[str]) -> np.ndarray:
        """The appended columns alone."""
        return prompt_features(texts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.hstack([np.asarray(self.base.encode(texts), dtype=np.float32), self.extra(texts)])
