"""The cascade's start gate (coserve.router.gate), judged on outcome rows that carry prompts.

* ``gate_cv``: grouped K-fold out-of-fold P(the gated expert is good | prompt) of each row, on the
  same folds as the check (``coserve.eval.cascade.item_folds``), with AUC, Brier score and calibration
  against the base rate.
* ``fit_gate``: that report, then the gate fitted on every row.
* ``gated_points``: the cascade replayed at each check threshold with the check and the gate both
  out of fold: what ``routing.cascade.start_gate`` would have done on the rows, beside the ungated
  cascade and the perfect check with the same gate.

Rows need ``prompt`` (``coserve outcomes --with-prompts``, or coserve.outcomes.prompts.with_prompts
for rows written without), the router's confidence and every expert's score. This module knows
nothing about HTTP or the engine's scheduling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coserve.config import LibraryConfig
from coserve.errors import ConfigError
from coserve.eval.cascade import (
    THRESHOLDS,
    StartRule,
    answers,
    calibration_error,
    cross_validate,
    item_folds,
    replay,
)
from coserve.router.check import FEATURES
from coserve.router.gate import GATE_FEATURES, StartGate

__all__ = ["confidence_of", "fit_gate", "fit_rows", "gate_cv", "gated_points", "predict_rows", "prompt_rows"]


def confidence_of(row: Mapping[str, Any]) -> float | None:
    """The router's confidence recorded in a row (else its top category probability; None: neither)."""
    router = row.get("router") or {}
    if "confidence" in router:
        return float(router["confidence"])
    probabilities = router.get("probabilities") or {}
    return float(max(probabilities.values())) if probabilities else None


def prompt_rows(rows: Sequence[Mapping[str, Any]], expert: str) -> list[Mapping[str, Any]]:
    """The rows a gate for ``expert`` learns from: a prompt, the router's confidence, its score."""
    usable = [r for r in rows if r.get("prompt") and confidence_of(r) is not None and expert in r["scores"]]
    if not usable:
        raise ConfigError(
            f"no row has a prompt, the router's confidence and a score of {expert!r} (coserve outcomes "
            "--with-prompts writes prompts; for rows written without, train-check --suite-prompts rebuilds them "
            "from their suites)"
        )
    return usable


def predict_rows(gate: StartGate, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The gate's P(good) per item id of ``rows`` (each with a prompt and the router's confidence)."""
    p = gate.predict_proba([str(r["prompt"]) for r in rows], [confidence_of(r) or 0.0 for r in rows])
    return {str(r["id"]): float(v) for r, v in zip(rows, p, strict=True)}


def fit_rows(
    rows: Sequence[Mapping[str, Any]], expert: str, good: float, C: float, features: Sequence[str]
) -> StartGate:
    """A gate for ``expert`` fitted on ``rows`` (each with a prompt, the router's confidence, its score)."""
    return StartGate(expert, C, good, features).fit(
        [str(r["prompt"]) for r in rows],
        [confidence_of(r) or 0.0 for r in rows],
        [float(r["scores"][expert]) for r in rows],
    )


def gate_cv(
    rows: Sequence[Mapping[str, Any]],
    expert: str,
    fold_of: Mapping[str, int],
    good: float = 0.5,
    C: float = 1.0,
    features: Sequence[str] = GATE_FEATURES,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Out-of-fold P(good) of ``expert`` per item id (folds: ``fold_of``) and the figures that judge it."""
    from sklearn.metrics import roc_auc_score

    usable = prompt_rows(rows, expert)
    folds = sorted({fold_of[str(r["id"])] for r in usable})
    oof: dict[str, float] = {}
    for fold in folds:
        train = [r for r in usable if fold_of[str(r["id"])] != fold]
        held = [r for r in usable if fold_of[str(r["id"])] == fold]
        oof.update(predict_rows(fit_rows(train, expert, good, C, features), held))
    y = np.array([float(r["scores"][expert]) >= good for r in usable], dtype=float)
    p = np.array([oof[str(r["id"])] for r in usable])
    base = float(y.mean())
    figures = {
        "expert": expert,
        "items": len(usable),
        "folds": len(folds),
        "features": list(features),
        "good_rate": round(base, 4),
        "auc": round(float(roc_auc_score(y, p)), 4) if 0 < base < 1 else None,
        "brier": round(float(np.mean((p - y) ** 2)), 4),
        "brier_base_rate": round(base * (1 - base), 4),
        "ece": round(calibration_error(p, y), 4),
    }
    return oof, figures


def fit_gate(
    rows: Sequence[Mapping[str, Any]],
    expert: str,
    folds: int = 5,
    seed: int = 0,
    good: float = 0.5,
    features: Sequence[str] = GATE_FEATURES,
) -> tuple[StartGate, dict[str, Any]]:
    """The gate fitted on every usable row, and its grouped-CV figures (the check's folds)."""
    usable = prompt_rows(rows, expert)
    _, figures = gate_cv(
        usable, expert, item_folds([str(r["id"]) for r in usable], folds, seed), good, features=features
    )
    return fit_rows(usable, expert, good, 1.0, features), figures


def gated_points(
    rows: Sequence[Mapping[str, Any]],
    library: LibraryConfig,
    expert: str,
    gate_threshold: float | None = None,
    folds: int = 5,
    seed: int = 0,
    max_steps: int = 3,
    good: float = 0.5,
    starts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The library's cascade replayed with the start gate at each of ``THRESHOLDS`` (the check's), the
    check and the gate out of fold on the same item-grouped folds; the perfect check with the gate."""
    data = answers(rows)
    experts = sorted({a.expert for a in data})
    fold_of = item_folds([a.item for a in data], folds, seed)
    oof, check_figures = cross_validate(data, experts, folds, seed, good, features=FEATURES)
    probability = {(a.item, a.expert): float(p) for a, p in zip(data, oof, strict=True)}
    gate_p, gate_figures = gate_cv(rows, expert, fold_of, good)
    missing = [str(r["id"]) for r in rows if str(r["id"]) not in gate_p]
    if missing:
        raise ConfigError(f"{len(missing)} rows lack a prompt for the start gate (first: {missing[0]})")
    rule = StartRule(expert, gate_p, gate_threshold)
    points = [replay(rows, library, probability, t, max_steps, starts=starts, gate=rule) for t in THRESHOLDS]
    perfect = {(str(r["id"]), e): 1.0 if float(s) >= good else 0.0 for r in rows for e, s in r["scores"].items()}
    return {
        "cv": check_figures,
        "gate_cv": gate_figures,
        "gate_threshold": gate_threshold,  # None: break-even, params(start) / params(next rung)
        "points": points,
        "oracle": replay(rows, library, perfect, 0.5, max_steps, starts=starts, gate=rule),
        "oracle_ungated": replay(rows, library, perfect, 0.5, max_steps, starts=starts),
    }
