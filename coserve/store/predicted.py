"""The per-prompt predictions the decision log keeps, and what a stored score hands back.

In prompt mode (``router.online.granularity: prompt``) the online router routes a request by the
trained router's per-prompt predicted score of every expert, and learns a later feedback score as the
residual against the answering expert's prediction. The decision log keeps that prediction with the
decision (the ``predicted`` column: JSON ``{expert: score}``), so that a score arriving after a
restart, after the prediction left the router's memory, or (on a Ray cluster) before the replica that
routed the request sent it to the learner, is learnt against the same number.

``encode_prediction`` writes the column's text, ``read_prediction`` reads it back (None for NULL or for
text that is not such a map), and ``Scored`` is ``DecisionLog.feedback_once``'s answer. Floats are
written as Python's ``repr``, so a prediction read back equals the one routed with, bit for bit.

Knows nothing about routing, HTTP or SQLite; it only encodes and decodes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["Scored", "encode_prediction", "read_prediction"]


class Scored(NamedTuple):
    """What ``feedback_once`` did with a score."""

    outcome: str  # "stored", "unknown" or "duplicate" (only "stored" wrote it)
    category: str | None  # the logged decision's category (None unless stored)
    expert: str  # the expert that answered it ("" unless stored)
    predicted: float | None = None  # that expert's logged per-prompt prediction (None: none was logged)


def encode_prediction(predicted: Mapping[str, float] | None) -> str | None:
    """The ``predicted`` column's text for an expert -> predicted score map (None: NULL)."""
    if not predicted:
        return None
    return json.dumps({str(expert): float(score) for expert, score in predicted.items()})


def read_prediction(text: str | None) -> dict[str, float] | None:
    """The expert -> predicted score map in a ``predicted`` column (None for NULL, for text that is not
    a JSON object of finite numbers, or for an empty one)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not value:
        return None
    scores: dict[str, float] = {}
    for expert, score in value.items():
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            return None
        scores[str(expert)] = float(score)
    return scores
