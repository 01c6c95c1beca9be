"""The ``server.log`` section of a library file: where the decision log is, whether it keeps texts,
and how long it keeps rows (``retention``; docs/operations.md).

A leaf like coserve.config (which embeds it): it knows nothing about SQLite or the writer; the
store (coserve.store.retention) applies what is validated here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MIN_RETENTION_AGE_S", "DecisionLogSettings", "RetentionSettings", "parse_duration"]

# Retention never deletes a row younger than this, whatever ``max_rows`` says: feedback on a recent
# decision and the cluster's drift tally (which reads new rows every second or so) always find it.
MIN_RETENTION_AGE_S = 3600.0

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number of seconds or a string with a unit: ``90``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.fullmatch(str(value))
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use seconds, or a number with s, m, h, d or w: '7d')")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


class RetentionSettings(BaseModel):
    """How much of the decision log is kept: rows older than ``max_age``, and the oldest rows beyond
    ``max_rows``, are deleted in the background. Either may be left out; neither: nothing is deleted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age: float | None = None  # seconds (or "7d"); at least MIN_RETENTION_AGE_S
    max_rows: int | None = Field(None, ge=1)  # rows kept at most (rows younger than an hour are never deleted)

    @field_validator("max_age", mode="before")
    @classmethod
    def _age(cls, value: Any) -> float | None:
        if value is None:
            return None
        seconds = parse_duration(value)
        if seconds < MIN_RETENTION_AGE_S:
            raise ValueError(
                f"{seconds:g} s is under the 1 h floor (feedback and the cluster's drift tally read recent rows)"
            )
        return seconds

    @model_validator(mode="after")
    def _some_limit(self) -> RetentionSettings:
        if self.max_age is None and self.max_rows is None:
            raise ValueError("give max_age, max_rows or both (leave retention out to keep every row)")
        return self


class DecisionLogSettings(BaseModel):
    """The decision log: one SQLite row per chat request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path | None = None  # default: $COSERVE_CACHE/decisions.sqlite (relative: to the library file)
    store_text: bool = False  # also keep prompts and completions (personal data: off unless asked)
    retention: RetentionSettings | None = None  # None: every row is kept (the default)
