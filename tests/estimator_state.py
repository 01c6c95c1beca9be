"""A trainable part's state through disk as a router directory keeps it (JSON + npz, no pickle): shared by
the conformance tests of the classifiers and of the predictors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def round_trip(model: object, tmp_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """get_state -> JSON + npz on disk -> loaded back without pickle."""
    params, arrays = model.get_state()  # type: ignore[attr-defined]
    (tmp_path / "params.json").write_text(json.dumps(params))
    np.savez(tmp_path / "arrays.npz", **arrays)
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as data:
        loaded = {key: data[key] for key in data.files}
    return json.loads((tmp_path / "params.json").read_text()), loaded
