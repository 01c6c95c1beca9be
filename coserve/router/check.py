"""The answer-quality check of a cascade: P(an expert's answer is good) from signals known at generation time.

Signals (``Signals``, one per answer): the mean and the minimum log-probability of the generated
tokens, the answer's length in tokens, whether it stopped on the token cap (``finish == "length"``),
the router's confidence for the prompt, and the verifier's verdicts on the text (coserve.router.verify:
code asked / parses / defines the asked function, a number on the last line), the examples the
prompt gives and the fraction of them the answer's code passes when run (coserve.router.examples;
run only where the caller opts in) — None in rows written before they were recorded, or not known.
``signals_of`` computes them all, for ``coserve outcomes`` and for the
live cascade alike. ``AnswerCheck`` is a logistic regression on a chosen set of them (``FEATURES``,
the default; ``BASIC_FEATURES``, the first five) per answering expert (the experts' models are fitted
together, one file for a library), fitted on outcome rows that carry ``signals`` with the label
"score >= ``good``". It is stored as one JSON file (its features, weights and scaling; no pickle)
beside the router; a file of format 1 (the five basic features) still loads.

This module knows nothing about the engine, HTTP or how outcome files are read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coserve.errors import ConfigError
from coserve.router.examples import examples_passed, prompt_examples
from coserve.router.logistic import fit_good, probabilities, read_arrays, state_of, write_state
from coserve.router.verify import verdicts
from coserve.types import Completion, Message

__all__ = [
    "BASIC_FEATURES",
    "CHECK_FORMAT_VERSION",
    "EXAMPLE_FEATURES",
    "FEATURES",
    "AnswerCheck",
    "Signals",
    "load_check",
    "signals_of",
]

CHECK_FORMAT_VERSION = 2  # layout of a check file; bump when it changes (2: the features are listed)
NO_LOGPROB = -20.0  # stands for the log-probability of an answer without tokens (empty answer)


@dataclass(frozen=True)
class Signals:
    """What is known of one answer when it has been generated (the check's input)."""

    mean_logprob: float | None  # mean natural-log probability of the generated tokens (None: not given)
    min_logprob: float | None  # the least likely token's
    tokens: int  # completion tokens
    finish: str  # "stop" | "length" | ...
    confidence: float  # the router's confidence for the prompt (top category probability)
    # The verifier's verdicts on the text (coserve.router.verify); None: not recorded (older rows).
    code_asked: bool | None = None
    code_parses: bool | None = None
    function_defined: bool | None = None
    number_last: bool | None = None
    # The prompt's own examples (coserve.router.examples): how many (None: none), and the fraction
    # the answer's code passed when run (None: not run: not asked for, or no examples).
    examples: int | None = None
    examples_passed: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def signals_of(
    completion: Completion, confidence: float, messages: Sequence[Message], run_examples: bool = False
) -> Signals:
    """The signals of a completion generated with ``logprobs`` (None log-probabilities without them)
    for the request of ``messages`` (the verifier reads the last user turn). ``run_examples`` runs the
    answer's code on the prompt's examples in a sandboxed child process (blocks up to a few seconds)."""
    values = [entry.logprob for entry in completion.logprobs]
    tokens = completion.usage.completion_tokens or len(values)
    mean = sum(values) / len(values) if values else None
    low = min(values) if values else None
    if not values and tokens == 0:
        mean = low = 0.0  # nothing generated: nothing was uncertain
    prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
    verdict = verdicts(prompt, completion.text)
    examples = sum(e.want is not None for e in prompt_examples(prompt)) or None
    passed = examples_passed(prompt, completion.text) if run_examples and examples else None
    return Signals(
        mean,
        low,
        tokens,
        completion.finish_reason,
        float(confidence),
        verdict.code_asked,
        verdict.code_parses,
        verdict.function_defined,
        verdict.number_last,
        examples,
        passed,
    )


BASIC_FEATURES = ("mean_logprob", "min_logprob", "log1p_tokens", "finish_length", "confidence")
VERIFIER_FEATURES = ("code_asked", "code_parses", "function_defined", "number_last")
# From examples_passed: the fraction passed / failed when the examples were run; both 0 when unknown.
EXAMPLE_FEATURES = ("examples_passed", "examples_failed")
FEATURES = (*BASIC_FEATURES, *VERIFIER_FEATURES, *EXAMPLE_FEATURES)


def _values(signals: Signals) -> dict[str, float]:
    """Every feature's value (an unrecorded verdict counts as False)."""
    mean = signals.mean_logprob if signals.mean_logprob is not None else NO_LOGPROB
    low = signals.min_logprob if signals.min_logprob is not None else NO_LOGPROB
    return {
        "mean_logprob": max(mean, NO_LOGPROB),
        "min_logprob": max(low, NO_LOGPROB),
        "log1p_tokens": math.log1p(max(signals.tokens, 0)),
        "finish_length": 1.0 if signals.finish == "length" else 0.0,
        "confidence": signals.confidence,
        **{name: 1.0 if getattr(signals, name) else 0.0 for name in VERIFIER_FEATURES},
        "examples_passed": signals.examples_passed or 0.0,
        "examples_failed": 1.0 - signals.examples_passed if signals.examples_passed is not None else 0.0,
    }


class AnswerCheck:
    """P(good answer | signals, expert): logistic regression per expert (estimator contract)."""

    def __init__(self, experts: Sequence[str], C: float = 1.0, good: float = 0.5, features: Sequence[str] = FEATURES):
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            raise ConfigError(f"unknown check features {unknown}; known: {', '.join(FEATURES)}")
        self.experts = list(experts)
        self.signal_names = tuple(features)  # the signals the check reads, in order
        self.C = C  # inverse regularisation strength
        self.good = good  # a score at or above this counts as a good answer

    def features(self, signals: Sequence[Signals], experts: Sequence[str]) -> np.ndarray:
        """[n, E * (F + 1)] raw features: per expert a block of the F signals and a 1, filled only in the
        answering expert's block (one logistic regression per expert, fitted together; an unknown
        expert is all zeros: the intercept alone)."""
        width = len(self.signal_names) + 1
        X = np.zeros((len(signals), width * len(self.experts)))
        for i, (s, expert) in enumerate(zip(signals, experts, strict=True)):
            if expert in self.experts:
                start = width * self.experts.index(expert)
                values = _values(s)
                X[i, start : start + width] = [*(values[name] for name in self.signal_names), 1.0]
        return X

    def fit(self, signals: Sequence[Signals], experts: Sequence[str], scores: Sequence[float]) -> AnswerCheck:
        X = self.features(signals, experts)
        self.mean_, self.scale_, self.coef_, self.intercept_ = fit_good(X, scores, self.good, self.C, "the check")
        return self

    def predict_proba(self, signals: Sequence[Signals], experts: Sequence[str]) -> np.ndarray:
        """[n] P(good) of each answer."""
        fitted = (self.mean_, self.scale_, self.coef_, self.intercept_)
        return probabilities(self.features(signals, experts), fitted)

    def probability(self, signals: Signals, expert: str) -> float:
        return float(self.predict_proba([signals], [expert])[0])

    def reads_examples(self) -> bool:
        """Whether the check learned from run examples (an example feature was non-zero in training)."""
        width = len(self.signal_names) + 1
        columns = [
            b * width + self.signal_names.index(name)
            for b in range(len(self.experts))
            for name in EXAMPLE_FEATURES
            if name in self.signal_names
        ]
        return bool(np.any(self.mean_[columns] != 0)) if columns else False

    # -- persistence ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format_version": CHECK_FORMAT_VERSION,
            "kind": "logistic",
            "signals": list(self.signal_names),
            "features": [f"{e}:{f}" for e in self.experts for f in (*self.signal_names, "bias")],
            "experts": self.experts,
            **state_of(self.C, self.good, (self.mean_, self.scale_, self.coef_, self.intercept_)),
        }

    def save(self, path: str | Path, **extra: Any) -> None:
        """Write the check as JSON (``extra``: its cross-validated figures, provenance)."""
        write_state(path, self.state(), **extra)


def load_check(path: str | Path) -> AnswerCheck:
    """Read a check file written by ``AnswerCheck.save``; ConfigError naming the file if unusable."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        version = state.get("format_version")
        if version not in (1, CHECK_FORMAT_VERSION):
            raise ConfigError(f"{path}: check format {version}, expected {CHECK_FORMAT_VERSION} (or 1)")
        names = BASIC_FEATURES if version == 1 else tuple(state["signals"])
        check = AnswerCheck(state["experts"], float(state["C"]), float(state["good"]), names)
        width = (len(names) + 1) * len(check.experts)
        check.mean_, check.scale_, check.coef_, check.intercept_ = read_arrays(state)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the answer check ({exc}); write it with coserve train-check") from None
    if not check.mean_.shape == check.scale_.shape == check.coef_.shape == (width,):
        raise ConfigError(f"{path}: the check's arrays do not match its {width} features")
    return check
