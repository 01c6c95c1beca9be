"""The median and range of repeated runs, as every benchmark reports them (``{"median", "min", "max"}``)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["spread", "spread_table"]


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min and max of ``values`` (at least one)."""
    seen = list(values)
    return {"median": statistics.median(seen), "min": min(seen), "max": max(seen)}


def spread_table(
    runs: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]], keys: Sequence[str]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per group and setting, each of ``keys``' spread over that setting's runs (rows of figures)."""
    return {
        group: {setting: {key: spread(row[key] for row in rows) for key in keys} for setting, rows in by.items()}
        for group, by in runs.items()
    }
