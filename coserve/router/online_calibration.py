"""The change detector's calibration for a served router: the prior's out-of-fold predictions beside a
``coserve train`` directory, and the offsets a server makes from them at start (session 13).

``coserve train`` cross-fits its own router kind on its outcome rows (``coserve.bench.adapt_fit.cross_fit``)
and ``save_prior_fit`` writes the rows' scores, the out-of-fold predictions and the category indices, with
the category and expert names they are in the order of, to ``calibration.npz`` in the router's directory.
Predictions rather than offsets, because the offsets depend on the budget (the router's picks at the
target), which is the library's and may change without retraining. ``served_calibration`` loads the file
and makes the offsets for the library's budget (``drift_calibration.calibration_from``); a missing or
unreadable file, or one for other categories or experts, gives None with a warning (``coserve experts add``
removes the file: its predictions are for the old experts, and it has not the data to remake them): the
detector then reads raw residuals, as before session 13, and the server starts.

``fading_state`` and ``restore_fading`` carry a fading calibration's shares (how much of each cell's
prior is left) through the saved online state, so a restart does not give a cell that has learnt its
bias the full offset again.

Knows nothing about HTTP, the store or how the predictions were fitted.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coserve.config_routing import OnlineSettings
from coserve.router.drift_calibration import CellCalibration, PriorFit, calibration_from

__all__ = ["PRIOR_FIT_FILE", "fading_state", "restore_fading", "save_prior_fit", "served_calibration"]

log = logging.getLogger("coserve.router")

PRIOR_FIT_FILE = "calibration.npz"  # beside a trained router's manifest.json
_ARRAYS = ("truth", "predicted", "category", "categories", "experts")


def save_prior_fit(directory: str | Path, fit: PriorFit, categories: Sequence[str], experts: Sequence[str]) -> Path:
    """Write ``fit`` (in the order of ``categories`` and ``experts``) to ``directory``/calibration.npz."""
    path = Path(directory) / PRIOR_FIT_FILE
    names, columns = np.asarray(list(categories), dtype=str), np.asarray(list(experts), dtype=str)
    with path.open("wb") as out:
        np.savez(
            out, truth=fit.truth, predicted=fit.predicted, category=fit.category, categories=names, experts=columns
        )
    return path


def _load(path: Path, categories: Sequence[str], experts: Sequence[str]) -> PriorFit | str:
    """The prior fit in ``path``, or why it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = {name: np.asarray(data[name]) for name in _ARRAYS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        return f"unreadable ({exc})"
    if saved["categories"].tolist() != list(categories) or saved["experts"].tolist() != list(experts):
        return "made for other categories or experts than the trained router's (retrain it)"
    rows, shape = len(saved["category"]), (len(saved["category"]), len(experts))
    fits = saved["truth"].shape == shape and saved["predicted"].shape == shape and rows > 0
    if not fits or not np.isfinite(saved["predicted"]).all():
        return "of another shape or with impossible values"
    if saved["category"].min() < 0 or saved["category"].max() >= len(categories):
        return "of another shape or with impossible values"
    return PriorFit(saved["truth"].astype(np.float64), saved["predicted"].astype(np.float64), saved["category"])


def served_calibration(
    directory: Path | None, settings: OnlineSettings, offline: np.ndarray, cost: np.ndarray, target: float,
    categories: Sequence[str], experts: Sequence[str],
) -> CellCalibration | None:  # fmt: skip
    """The calibration ``settings`` ask for, from the prior fit beside the trained router in ``directory``;
    None where they ask for none, or (with a warning) where no usable file is there."""
    if not settings.calibrates:
        return None
    path = None if directory is None else directory / PRIOR_FIT_FILE
    found: PriorFit | str = (
        "not found (a router trained before session 13, or grown by coserve experts add: retrain it with coserve train)"
    )
    if path is not None and path.exists():
        found = _load(path, categories, experts)
    if isinstance(found, str):
        log.warning(
            "router.online.change_calibration: the prior's out-of-fold predictions (%s) are %s; the change "
            "detector reads raw residuals", PRIOR_FIT_FILE, found,
        )  # fmt: skip
        return None
    fading = settings.change_calibration == "fading"
    floor, shrink = settings.weight_floor, settings.change_calibration_shrink
    return calibration_from(found, np.asarray(cost, dtype=np.float64), target, floor, shrink, offline, fading)


def fading_state(calibration: CellCalibration | None) -> dict[str, Any]:
    """The shares of a calibration as JSON values for the saved state (nothing without one)."""
    return {} if calibration is None else {"calibration_unlearnt": calibration.unlearnt.tolist()}


def restore_fading(calibration: CellCalibration | None, state: dict[str, Any]) -> None:
    """Load the shares ``fading_state`` saved; a state without them (or for another table) leaves them at 1,
    one with impossible values too, with a warning. Never raises: the rest of the state still resumes."""
    if calibration is None or "calibration_unlearnt" not in state:
        return
    try:
        shares = np.asarray(state["calibration_unlearnt"], dtype=np.float64)
    except (TypeError, ValueError):
        shares = np.zeros(0)
    if shares.shape != calibration.unlearnt.shape or not (np.isfinite(shares) & (shares >= 0) & (shares <= 1)).all():
        log.warning("the saved calibration shares do not fit this router: each cell starts from its full offset")
        return
    calibration.unlearnt = shares
