"""The change detector's residuals calibrated per (category, expert) cell, from the prior outcomes only (session 13).

Where the router chooses, an expert gets the prompts whose estimate is high, so there its scores fall short
of the estimate on average (the winner's curse), and the CUSUM's down side drifts toward a false drop of an
expert that never changed. Session 12 found the bias LOCAL (per category and prompt region), and a reference
learnt from the live stream also learnt part of a real change. So here the correction is learnt before the
stream starts, from the prior outcomes, out of fold, and stays fixed: the live stream cannot absorb a change.

* ``picks``: for prompts with out-of-fold predictions ``[n, E]``, the expert the router would choose at
  each of ``SPEND_LEVELS``: the weight at which the prompts' choices cost that share of the target (the
  feed-forward part's bisection, ``drift.weight_for_mix``, down to the two-sided floor). Why several: the
  live weight moves with the category mix of each phase, so the prompts an expert gets do too; pooling the
  choices at 0.8, 1 and 1.25 times the target covers cheaper and dearer maps than the prior's own mix needs.
* ``cell_offsets``: per cell, the mean of (true score - prediction), as the detector reads it (the cell's
  clipped view of the score, ``cell_offsets``' docstring), over the prompts picked for that expert (each
  spend level's pick weighs 1 / levels, so counts are in prompts), shrunk toward the expert's pooled mean
  with ``shrink`` pseudo-counts, the pooled mean itself shrunk toward 0 with as many:
  ``pooled[e] = sum_e / (n_e + shrink)``, ``offset[k, e] = (sum_ke + shrink pooled[e]) / (n_ke + shrink)``.
* ``CellCalibration``: a router's offsets. The detector reads ``r - offset[k, e]`` (``cell``), or
  (``fading``) ``r - u[k, e] offset[k, e]``, ``u`` the share of the cell's pseudo-counts still from the
  prior (1 at the start; a score joining a cell of total count ``T`` multiplies it by ``T / (T + 1)``; the
  count cap scales prior and feedback alike, so it leaves ``u``): the offset is the bias of the PRIOR's
  estimate, and as feedback replaces the prior in the cell, the cell's own mean carries less of it.

Pure numbers; knows nothing about fitting predictors (``coserve.bench.adapt_fit`` cross-fits them), HTTP or
the store. A served router makes its offsets at start (``online_calibration``, which also carries the fading
shares through the saved online state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coserve.router.drift import weight_for_mix
from coserve.router.mapping import choose_per_prompt

__all__ = [
    "CALIBRATIONS", "SPEND_LEVELS", "CellCalibration", "CellOffsets", "PriorFit", "calibration_from", "cell_offsets",
    "picks",
]  # fmt: skip

CALIBRATIONS = ("none", "cell", "fading")  # none: residuals as they are; see the module docstring
SPEND_LEVELS = (0.8, 1.0, 1.25)  # shares of the target at whose weights the router's choices are pooled


@dataclass(frozen=True)
class PriorFit:
    """The prior rows' own scores beside out-of-fold predictions of them (what the offsets are learnt from)."""

    truth: np.ndarray  # [prior rows, E] the outcome scores, in the router's expert order (NaN: not measured)
    predicted: np.ndarray  # [prior rows, E] each row predicted by a predictor fitted without its fold
    category: np.ndarray  # [prior rows] the row's category, as an index into the router's categories


def picks(
    predicted: np.ndarray, cost: np.ndarray, target: float, floor: float = 0.0, levels: tuple[float, ...] = SPEND_LEVELS
) -> list[np.ndarray]:
    """Per spend level, the expert each prompt goes to: the choices (``predicted - w cost / (level target)``,
    ties to the cheaper) at the smallest weight >= ``-floor`` whose choices cost at most ``level target`` on
    average over the prompts."""
    rows = np.asarray(predicted, dtype=np.float64)
    uniform = np.ones(len(rows))
    chosen = []
    for level in levels:
        scaled = np.asarray(cost, dtype=np.float64) / (level * target)
        weight = weight_for_mix(rows, scaled, uniform, least=-floor * level)  # the floor in these weight units
        chosen.append(choose_per_prompt(rows, scaled, weight))
    return chosen


@dataclass(frozen=True)
class CellOffsets:
    """The estimate of each cell's bias, with the (prompt-weighted) picks it rests on."""

    offset: np.ndarray  # [K, E] the shrunk mean of true - predicted where the router picks the expert
    count: np.ndarray  # [K, E] picked prompts per cell (each level's pick weighs 1 / levels)
    pooled: np.ndarray  # [E] each expert's shrunk pooled mean (what an empty cell gets)


def cell_offsets(
    truth: np.ndarray, predicted: np.ndarray, category: np.ndarray, chosen: list[np.ndarray], categories: int,
    shrink: float, offline: np.ndarray | None = None,
) -> CellOffsets:  # fmt: skip
    """Each cell's offset (module docstring) from ``truth`` [n, E] (NaN: not measured, left out), the
    out-of-fold ``predicted`` [n, E], each prompt's ``category`` index and ``chosen``'s picks per level.
    With ``offline`` (the table ``S`` [K, E] the posteriors start from) a residual is the one the detector
    reads at the start, ``clip(truth - predicted + S, 0, 1) - S`` (a cell learns the score less the
    prompt's offset from its category, clipped to [0, 1]); without it, ``truth - predicted``."""
    if not shrink > 0:
        raise ValueError("shrink must be > 0 (pseudo-counts toward the expert's pooled mean)")
    truth, predicted = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    experts = truth.shape[1]
    total, count = np.zeros((categories, experts)), np.zeros((categories, experts))
    rows = np.arange(len(truth))
    table = None if offline is None else np.asarray(offline, dtype=np.float64)[np.asarray(category)]  # [n, E]
    for pick in chosen:
        residual = truth[rows, pick] - predicted[rows, pick]
        if table is not None:
            base = table[rows, pick]
            residual = np.clip(residual + base, 0.0, 1.0) - base  # NaN stays NaN
        known = np.isfinite(residual)
        cells = (np.asarray(category)[known], np.asarray(pick)[known])
        np.add.at(total, cells, residual[known] / len(chosen))
        np.add.at(count, cells, 1.0 / len(chosen))
    pooled = total.sum(axis=0) / (count.sum(axis=0) + shrink)
    offset = (total + shrink * pooled[None, :]) / (count + shrink)
    return CellOffsets(offset, count, pooled)


class CellCalibration:
    """The offsets a router's change detector reads its residuals against (module docstring)."""

    def __init__(self, offset: np.ndarray, fading: bool = False) -> None:
        offset = np.asarray(offset, dtype=np.float64)
        if offset.ndim != 2 or not np.isfinite(offset).all() or (np.abs(offset) > 1).any():
            raise ValueError("the calibration's offsets must be a finite [categories, experts] table within [-1, 1]")
        self.offset, self.fading = offset, bool(fading)
        self.unlearnt = np.ones_like(offset)  # per cell, the share of its pseudo-counts still from the prior

    def read(self, category: int, expert: int, total: float) -> float:
        """The offset of a residual on (``category``, ``expert``), whose cell holds ``total`` pseudo-counts
        before the score joins it; with ``fading`` the prior's share then falls by ``total / (total + 1)``."""
        value = float(self.offset[category, expert] * self.unlearnt[category, expert])
        if self.fading:
            self.unlearnt[category, expert] *= total / (total + 1.0)
        return value


def calibration_from(
    prior_fit: PriorFit, cost: np.ndarray, target: float, floor: float, shrink: float, offline: np.ndarray,
    fading: bool,
) -> CellCalibration:  # fmt: skip
    """A router's calibration for its budget (``cost``, ``target``, the two-sided ``floor``), from the prior's
    out-of-fold predictions, the offsets as its detector reads residuals against ``offline`` ``S`` [K, E]."""
    chosen = picks(prior_fit.predicted, cost, target, floor)
    table = np.asarray(offline, dtype=np.float64)
    offsets = cell_offsets(prior_fit.truth, prior_fit.predicted, prior_fit.category, chosen, len(table), shrink, table)
    return CellCalibration(offsets.offset, fading=fading)
