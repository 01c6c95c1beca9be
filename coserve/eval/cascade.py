"""The answer check and the cascade, judged on outcome data that records signals (``coserve outcomes``).

* ``answers``: one (item, expert, signals, score) per answer of the rows that carry ``signals``.
* ``cross_validate``: grouped K-fold (an item's answers stay in one fold) out-of-fold P(good) of
  each answer, with Brier score, log loss, ROC AUC and expected calibration error against the base rate.
* ``train_check``: that report, then the check fitted on every answer.
* ``replay``: a cascade replayed on rows that hold every expert's answer (greedy answers are what
  the live cascade would get): the library's decision from the recorded router probabilities
  (coserve.router.policy), its ladder (coserve.engine.cascade), the check at each rung; quality,
  mean active parameters (summed over the steps: each step is a whole generation) and steps taken.
  ``single`` in the result is the same decision without a check (the library in single mode).
  Without a library the ladder is every expert, cheapest first (FrugalGPT's plain cascade).

This module knows nothing about HTTP or the engine's scheduling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coserve.config import LibraryConfig
from coserve.engine.cascade import cascade_rungs, params_of
from coserve.errors import ConfigError
from coserve.jsonl import read_rows
from coserve.router.check import FEATURES, VERIFIER_FEATURES, AnswerCheck, Signals
from coserve.router.gate import start_limit
from coserve.router.policy import decide
from coserve.types import Decision

__all__ = [
    "THRESHOLDS",
    "Answer",
    "StartRule",
    "answers",
    "calibration_error",
    "cascade_points",
    "cross_validate",
    "item_folds",
    "oracle_point",
    "read_signal_rows",
    "replay",
    "train_check",
]

THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.01)  # 0: never escalate; 1.01: always climb


@dataclass(frozen=True)
class StartRule:
    """A start gate in a replay: P(``expert``'s answer is good) per item, and the limit below which
    the first rung is skipped (None: break-even, params(first rung) / params(second))."""

    expert: str
    probability: Mapping[str, float]  # item id -> P(good), out of fold on training rows
    threshold: float | None = None

    def skips(self, item: str, rungs: Sequence[str], params_b: Mapping[str, float]) -> bool:
        """Whether the ladder ``rungs`` of ``item`` starts at the second rung."""
        if len(rungs) < 2 or rungs[0] != self.expert:
            return False
        limit = self.threshold if self.threshold is not None else start_limit(params_b[rungs[0]], params_b[rungs[1]])
        return self.probability[item] < limit


@dataclass(frozen=True)
class Answer:
    """One expert's answer to one item, as the check learns from it."""

    item: str
    expert: str
    signals: Signals
    score: float


def read_signal_rows(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of outcome files that carry ``signals`` (rows of older files are left out). An item id
    in several files counts once: the row of the file named last (a later run of the same item)."""
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            parsed = read_rows(Path(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        for number, row in parsed:
            if isinstance(row, str):
                raise ConfigError(f"{path}:{number}: {row}")
            if isinstance(row, dict) and row.get("signals"):
                rows.pop(str(row.get("id")), None)  # a later file's row replaces it, in the later file's place
                rows[str(row.get("id"))] = row
    if not rows:
        raise ConfigError(f"no row with signals in {', '.join(map(str, paths))}: write them with coserve outcomes")
    return list(rows.values())


def _signals(raw: Mapping[str, Any]) -> Signals:
    """A row's recorded signals; the verifier's verdicts and the examples' are None in rows written
    before them (unknown)."""
    signals = Signals(
        raw.get("mean_logprob"),
        raw.get("min_logprob"),
        int(raw["tokens"]),
        str(raw["finish"]),
        float(raw["confidence"]),
        *(raw.get(name) for name in VERIFIER_FEATURES),
    )
    return dataclasses.replace(signals, examples=raw.get("examples"), examples_passed=raw.get("examples_passed"))


def answers(rows: Sequence[Mapping[str, Any]]) -> list[Answer]:
    """Every scored answer that has signals."""
    out: list[Answer] = []
    for row in rows:
        for expert, raw in row.get("signals", {}).items():
            if expert in row.get("scores", {}):
                out.append(Answer(str(row["id"]), expert, _signals(raw), float(row["scores"][expert])))
    return out


def calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of probabilities ``p`` against 0/1 labels ``y`` (``bins`` equal bins)."""
    edges = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(p[edges == b].mean() - y[edges == b].mean()) * (edges == b).sum()
            for b in range(bins)
            if (edges == b).any()
        )
        / len(p)
    )


def item_folds(items: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """Each item's fold (0 .. folds - 1): a seeded permutation dealt round-robin. The check and the
    start gate (coserve.eval.cascade_gate) share it, so both are out of fold on the same items."""
    ordered = sorted(set(items))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i]: rank % folds for rank, i in enumerate(order)}


def cross_validate(
    data: Sequence[Answer],
    experts: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    good: float = 0.5,
    C: float = 1.0,
    features: Sequence[str] = FEATURES,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Out-of-fold P(good) of each answer (folds grouped by item) and the figures that judge them."""
    from sklearn.metrics import log_loss, roc_auc_score

    items = sorted({a.item for a in data})
    fold_of = item_folds(items, folds, seed)
    y = np.array([a.score >= good for a in data], dtype=float)
    oof = np.zeros(len(data))
    for fold in range(folds):
        test = np.array([fold_of[a.item] == fold for a in data])
        train = [a for a, t in zip(data, test, strict=True) if not t]
        check = AnswerCheck(experts, C, good, features).fit(
            [a.signals for a in train], [a.expert for a in train], [a.score for a in train]
        )
        held = [a for a, t in zip(data, test, strict=True) if t]
        oof[test] = check.predict_proba([a.signals for a in held], [a.expert for a in held])
    base = float(y.mean())
    figures = {
        "answers": len(data),
        "items": len(items),
        "folds": folds,
        "features": list(features),
        "good_rate": round(base, 4),
        "brier": round(float(np.mean((oof - y) ** 2)), 4),
        "brier_base_rate": round(base * (1 - base), 4),  # always predicting the base rate
        "log_loss": round(float(log_loss(y, oof, labels=[0, 1])), 4),
        "auc": round(float(roc_auc_score(y, oof)), 4) if 0 < base < 1 else None,
        "ece": round(calibration_error(oof, y), 4),
        "per_expert_auc": {
            e: round(float(roc_auc_score(y[m], oof[m])), 4)
            for e in experts
            if (m := np.array([a.expert == e for a in data])).any() and 0 < y[m].mean() < 1
        },
    }
    return oof, figures


def train_check(
    rows: Sequence[Mapping[str, Any]],
    experts: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    good: float = 0.5,
    features: Sequence[str] = FEATURES,
) -> tuple[AnswerCheck, dict[str, Any], np.ndarray, list[Answer]]:
    """The check fitted on every answer, its grouped-CV figures, and the out-of-fold probabilities."""
    data = answers(rows)
    oof, figures = cross_validate(data, experts, folds, seed, good, features=features)
    check = AnswerCheck(experts, good=good, features=features).fit(
        [a.signals for a in data], [a.expert for a in data], [a.score for a in data]
    )
    return check, figures, oof, data


def _decision(row: Mapping[str, Any], library: LibraryConfig | None, params_b: Mapping[str, float]) -> Decision | None:
    """The row's first expert and order: the library's decision from the recorded router
    probabilities (None without them), or, with no library, every expert cheapest first."""
    if library is None:
        order = sorted(params_b, key=lambda e: (params_b[e], e))
        return Decision(order[0], None, 1.0, tuple(order[1:]), "cost_order")
    router = row.get("router") or {}
    return decide(router["probabilities"], library) if "probabilities" in router else None


def replay(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig | None,
    probability: Mapping[tuple[str, str], float],
    threshold: float,
    max_steps: int,
    params_b: Mapping[str, float] | None = None,
    starts: Mapping[str, str] | None = None,
    gate: StartRule | None = None,
) -> dict[str, Any]:
    """The cascade and the single choice of ``library`` on rows scored for every expert; with no
    library, FrugalGPT's plain cascade: every expert of ``params_b``, cheapest first. ``starts``
    (category -> first expert; others answer by single choice, unchecked) defaults to the library's
    ``routing.cascade.categories``. ``gate``: a start gate's P(its expert is good) per item; where the
    ladder starts at that expert and the probability is below the gate's limit, the first rung is
    skipped (``skipped`` in the result counts them), as the live cascade does.

    ``probability[(item, expert)]`` is the check's P(good) of that answer (out-of-fold on training rows).
    """
    params = params_of(library) if library is not None else dict(params_b or {})
    settings = library.routing.cascade if library is not None else None
    starts = starts if starts is not None else (settings.categories if settings is not None else None)
    cascade_q, cascade_p, single_q, single_p, steps = [], [], [], [], []
    skipped = 0
    for row in rows:
        scores = row.get("scores", {})
        decision = _decision(row, library, params)
        if decision is None or not all(e in scores for e in params):
            continue
        rungs = cascade_rungs(decision, params, starts)
        if gate is not None and gate.skips(str(row["id"]), rungs, params):
            rungs, skipped = rungs[1:], skipped + 1
        taken = 0
        for index, expert in enumerate(rungs):
            taken += 1
            if index + 1 >= min(len(rungs), max_steps) or probability[(str(row["id"]), expert)] >= threshold:
                break
        asked = rungs[:taken]
        cascade_q.append(float(scores[asked[-1]]))
        cascade_p.append(sum(params[e] for e in asked))
        single_q.append(float(scores[decision.expert]))
        single_p.append(params[decision.expert])
        steps.append(taken)
    if not steps:
        raise ConfigError("no row has router probabilities and a score for every expert (coserve outcomes writes both)")
    return {
        "items": len(steps),
        "threshold": threshold,
        "max_steps": max_steps,
        "cascade": {
            "quality": round(float(np.mean(cascade_q)), 4),
            "avg_params_b": round(float(np.mean(cascade_p)), 4),
        },
        "single": {"quality": round(float(np.mean(single_q)), 4), "avg_params_b": round(float(np.mean(single_p)), 4)},
        "steps": {str(k): steps.count(k) for k in sorted(set(steps))},
        **({"skipped": skipped} if gate is not None else {}),
    }


def cascade_points(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig | None,
    folds: int = 5,
    seed: int = 0,
    max_steps: int = 3,
    good: float = 0.5,
    params_b: Mapping[str, float] | None = None,
    features: Sequence[str] = FEATURES,
) -> dict[str, Any]:
    """The cascade (``replay``) at each of ``THRESHOLDS`` on ``rows``, the check's probabilities out of
    fold (grouped by item): quality/cost points beside the single choice, and the check's figures."""
    data = answers(rows)
    experts = sorted({a.expert for a in data})
    oof, figures = cross_validate(data, experts, folds, seed, good, features=features)
    probability = {(a.item, a.expert): float(p) for a, p in zip(data, oof, strict=True)}
    points = [replay(rows, library, probability, t, max_steps, params_b) for t in THRESHOLDS]
    return {"cv": figures, "points": points}


def check_points(
    rows: Sequence[Mapping[str, Any]], library: LibraryConfig, check: AnswerCheck, max_steps: int
) -> list[dict[str, Any]]:
    """The library's cascade at each of ``THRESHOLDS`` on held-out ``rows``, judged by a fitted ``check``."""
    data = answers(rows)
    p = check.predict_proba([a.signals for a in data], [a.expert for a in data])
    probability = {(a.item, a.expert): float(v) for a, v in zip(data, p, strict=True)}
    return [replay(rows, library, probability, t, max_steps) for t in THRESHOLDS]


def oracle_point(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig | None,
    max_steps: int,
    params_b: Mapping[str, float] | None = None,
    good: float = 0.5,
) -> dict[str, Any]:
    """The cascade with a perfect check (an answer is accepted exactly when its score is >= ``good``):
    the most any check could give this library's ladder on ``rows``."""
    probability = {
        (str(row["id"]), expert): 1.0 if float(score) >= good else 0.0
        for row in rows
        for expert, score in row.get("scores", {}).items()
    }
    return replay(rows, library, probability, 0.5, max_steps, params_b)
