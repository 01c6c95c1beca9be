"""A cascade's start gate: P(the first rung's answer will be good | the prompt), known before generating.

A cascade that starts at a cheap expert pays off only where that expert is likely to be right: with
costs c1 < c2 and a good check, starting at c1 costs less in expectation than asking c2 at once when
P(accepted at the first rung) > c1 / c2. The gate estimates that probability per prompt, from what the
prompt shows, so a prompt that looks hard goes straight to the next rung (``routing.cascade.start_gate``,
coserve.engine.cascade).

    features -> ``gate_features``: the cheap prompt features of coserve.router.features (length,
                digits, code and maths markers, doctests), the number of examples the prompt gives
                (coserve.router.examples), difficulty markers (a constraints section, the largest
                number written, a modulus such as 10^9 + 7, words of algorithmic problems), and the
                router's confidence; regular expressions and a parse of the examples, no model
    model    -> ``StartGate``: a logistic regression on those features for one expert (the rung it
                gates), label "that expert's score >= ``good``" (estimator contract), stored as one
                JSON file (features, weights, scaling; no pickle)

This module knows nothing about the engine, HTTP, suites or how outcome files are read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coserve.errors import ConfigError
from coserve.router.examples import prompt_examples
from coserve.router.features import FEATURE_NAMES, prompt_features
from coserve.router.logistic import fit_good, probabilities, read_arrays, state_of, write_state

__all__ = ["GATE_FEATURES", "GATE_FORMAT_VERSION", "StartGate", "gate_features", "load_gate", "start_limit"]

GATE_FORMAT_VERSION = 1  # layout of a gate file; bump when it changes
GATE_FEATURES = (
    *FEATURE_NAMES,
    "log_examples",  # log1p(examples the prompt gives with an expected value)
    "constraints",  # the prompt has a "Constraints" section (competitive-programming statements)
    "log_bound",  # log10 of the largest number written (10^5, 10**9, 100000), / 9
    "modulo",  # "modulo" or "10^9 + 7": answers that must be reduced, a mark of counting problems
    "algorithm_words",  # log1p(words of algorithmic problems: subarray, subsequence, graph, ...)
    "confidence",  # the router's confidence for the prompt (top category probability)
)
_POWER = re.compile(r"10\s*(?:\^|\*\*)\s*(\d{1,3})|10<sup>(\d{1,3})</sup>")
_NUMBER = re.compile(r"\d[\d,_]*")
_MODULO = re.compile(r"\bmodulo\b|\bmod\b|10\s*(?:\^|\*\*)\s*9\s*\+\s*7|1000000007|1_000_000_007", re.IGNORECASE)
_CONSTRAINTS = re.compile(r"^\s*constraints\s*:?", re.IGNORECASE | re.MULTILINE)
_ALGORITHM = re.compile(
    r"\b(?:subarrays?|subsequences?|substrings?|permutations?|intervals?|graph|edges?|nodes?|trees?|grid|"
    r"matrix|paths?|minimum|maximum|optimal|partition|queries|distinct|operations?)\b",
    re.IGNORECASE,
)


def start_limit(start_params_b: float, next_params_b: float) -> float:
    """Break-even P(good) at the start: below it, asking the next rung at once costs less in
    expectation than starting cheap and escalating (c1 + (1 - P) c2 > c2 when P < c1 / c2)."""
    return start_params_b / next_params_b


def _largest_number(text: str) -> float:
    """log10 of the largest number written in ``text`` (powers of ten included), 0 when none."""
    largest = 0.0
    for match in _POWER.finditer(text):
        largest = max(largest, float(match.group(1) or match.group(2)))
    for raw in _NUMBER.findall(text):
        digits = raw.replace(",", "").replace("_", "")
        if digits:
            largest = max(largest, min(len(digits.lstrip("0")) - 1.0, 18.0))
    return min(largest, 18.0)


def gate_features(prompt: str, confidence: float) -> dict[str, float]:
    """Every gate feature of one prompt (the request's last user turn) and the router's confidence."""
    base = dict(zip(FEATURE_NAMES, prompt_features([prompt])[0].tolist(), strict=True))
    examples = sum(e.want is not None for e in prompt_examples(prompt))
    return {
        **base,
        "log_examples": math.log1p(examples),
        "constraints": float(bool(_CONSTRAINTS.search(prompt))),
        "log_bound": _largest_number(prompt) / 9.0,
        "modulo": float(bool(_MODULO.search(prompt))),
        "algorithm_words": math.log1p(len(_ALGORITHM.findall(prompt))),
        "confidence": float(confidence),
    }


class StartGate:
    """P(``expert``'s answer is good | prompt): a logistic regression on ``gate_features``."""

    def __init__(self, expert: str, C: float = 1.0, good: float = 0.5, features: Sequence[str] = GATE_FEATURES):
        unknown = sorted(set(features) - set(GATE_FEATURES))
        if unknown:
            raise ConfigError(f"unknown gate features {unknown}; known: {', '.join(GATE_FEATURES)}")
        self.expert = expert  # the rung the gate decides on: the cascade's start expert
        self.feature_names = tuple(features)
        self.C = C  # inverse regularisation strength
        self.good = good  # a score at or above this counts as a good answer

    def features(self, prompts: Sequence[str], confidences: Sequence[float]) -> np.ndarray:
        """[n, F] raw features of each prompt."""
        rows = [gate_features(p, c) for p, c in zip(prompts, confidences, strict=True)]
        return np.asarray([[row[name] for name in self.feature_names] for row in rows], dtype=float).reshape(
            len(rows), len(self.feature_names)
        )

    def fit(self, prompts: Sequence[str], confidences: Sequence[float], scores: Sequence[float]) -> StartGate:
        X = self.features(prompts, confidences)
        fitted = fit_good(X, scores, self.good, self.C, "the start gate", self.expert)
        self.mean_, self.scale_, self.coef_, self.intercept_ = fitted
        return self

    def predict_proba(self, prompts: Sequence[str], confidences: Sequence[float]) -> np.ndarray:
        """[n] P(the gated expert's answer is good) of each prompt."""
        fitted = (self.mean_, self.scale_, self.coef_, self.intercept_)
        return probabilities(self.features(prompts, confidences), fitted)

    def probability(self, prompt: str, confidence: float) -> float:
        return float(self.predict_proba([prompt], [confidence])[0])

    def state(self) -> dict[str, Any]:
        return {
            "format_version": GATE_FORMAT_VERSION,
            "kind": "start_gate",
            "expert": self.expert,
            "features": list(self.feature_names),
            **state_of(self.C, self.good, (self.mean_, self.scale_, self.coef_, self.intercept_)),
        }

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write the gate as JSON (``extra``: its cross-validated figures, where it came from)."""
        write_state(path, self.state(), **extra)


def load_gate(path: str | Path) -> StartGate:
    """Read a gate file written by ``StartGate.save``; ConfigError naming the file if unusable."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        if state.get("kind") != "start_gate" or state.get("format_version") != GATE_FORMAT_VERSION:
            raise ConfigError(
                f"{path}: not a start gate of format {GATE_FORMAT_VERSION} (kind {state.get('kind')!r}, "
                f"format {state.get('format_version')!r})"
            )
        gate = StartGate(str(state["expert"]), float(state["C"]), float(state["good"]), tuple(state["features"]))
        gate.mean_, gate.scale_, gate.coef_, gate.intercept_ = read_arrays(state)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{path}: cannot read the start gate ({exc}); write it with coserve train-check --gate"
        ) from None
    width = len(gate.feature_names)
    if not gate.mean_.shape == gate.scale_.shape == gate.coef_.shape == (width,):
        raise ConfigError(f"{path}: the gate's arrays do not match its {width} features")
    return gate
