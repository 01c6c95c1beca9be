"""Routed vs single experts, from one outcome file written with ``coserve outcomes --routed``.

Only items where every column (each expert and ``routed``) has a score are compared, so all
columns are judged on the same items. Per column: mean quality, mean active parameters (for
``routed``, those of the expert that answered each item; for a cascade, the sum over every expert it
asked: each step is a whole generation), mean latency (seconds from submitting
to the last token, queueing included: all columns ran side by side on the same machine), and the
quality per category. This module knows nothing about the engine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coserve.config import LibraryConfig
from coserve.errors import ConfigError
from coserve.jsonl import read_rows
from coserve.outcomes.runner import ROUTED
from coserve.router.policy import decide

__all__ = ["SINGLE", "compare_routed", "format_comparison"]

SINGLE = "single"  # the column of another library's single-choice routing (``--single LIBRARY``)


def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        rows = read_rows(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    for number, row in rows:
        if isinstance(row, str):
            raise ConfigError(f"{path}:{number}: {row}")
        if isinstance(row, dict) and (problem := _problem(row)):
            raise ConfigError(f"{path}:{number}: {problem}")
    return [row for _, row in rows if isinstance(row, dict)]


def _problem(row: Mapping[str, Any]) -> str | None:
    """What makes an outcome row unreadable here (None: nothing): a row compared must have a category and
    scores in [0, 1], as ``coserve outcomes`` writes them."""
    if not isinstance(row.get("category"), str):
        return "no category (a string)"
    scores = row.get("scores", {})
    if not isinstance(scores, dict):
        return "scores: not an object of expert -> score"
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            return f"score of {name!r} is not a number in [0, 1]: {value!r}"
    return None


def _asked(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A cascade's steps that asked an expert (a start the start gate skipped asked none)."""
    return [step for step in row.get("routed_steps") or () if step.get("outcome") != "skipped"]


def _cost(row: Mapping[str, Any], params_b: Mapping[str, float]) -> float:
    """Active parameters the routed answer cost: every cascade step's expert, else the one that answered."""
    steps = _asked(row)
    if steps:
        return sum(params_b[step["expert"]] for step in steps)
    return params_b[row["routed_expert"]]


def compare_routed(
    path: str | Path, params_b: Mapping[str, float], single: LibraryConfig | None = None
) -> dict[str, Any]:
    """The comparison of ``routed`` against each expert in ``params_b`` on the file's paired items.

    With ``single``, a ``single`` column too: on each item, the expert that library's policy picks
    from the router probabilities the row records (its single-choice routing, answered greedily by
    that expert's own column).
    """
    path = Path(path)
    rows = _rows(path)
    if not any(ROUTED in r.get("scores", {}) for r in rows):
        raise ConfigError(f"{path}: no routed scores; write it with coserve outcomes --routed")
    columns = [*params_b, ROUTED]
    if single is not None:
        for row in rows:
            if "probabilities" in row.get("router", {}):
                expert = decide(row["router"]["probabilities"], single).expert
                if expert in row.get("scores", {}):
                    row["scores"][SINGLE], row["single_expert"] = row["scores"][expert], expert
                    if expert in row.get("latency_s", {}):
                        row["latency_s"][SINGLE] = row["latency_s"][expert]
        columns.append(SINGLE)
    paired = [r for r in rows if all(c in r.get("scores", {}) for c in columns) and r.get("routed_expert") in params_b]
    if not paired:
        raise ConfigError(f"{path}: no item has a score for every column ({', '.join(columns)})")
    result: dict[str, Any] = {"items": len(paired), "left_out": len(rows) - len(paired), "columns": {}}
    categories = sorted({r["category"] for r in paired})
    for column in columns:
        scores = [float(r["scores"][column]) for r in paired]
        params = [
            _cost(r, params_b) if column == ROUTED else params_b[r["single_expert"] if column == SINGLE else column]
            for r in paired
        ]
        # A file written by hand (or by another tool) may record no latencies: the mean is then unknown.
        latency = [float(r["latency_s"][column]) for r in paired if column in r.get("latency_s", {})]
        by_category = {
            c: round(
                sum(float(r["scores"][column]) for r in paired if r["category"] == c)
                / sum(1 for r in paired if r["category"] == c),
                4,
            )
            for c in categories
        }
        result["columns"][column] = {
            "quality": round(sum(scores) / len(scores), 4),
            "avg_params_b": round(sum(params) / len(params), 4),
            "avg_latency_s": round(sum(latency) / len(latency), 3) if len(latency) == len(paired) else None,
            "by_category": by_category,
        }
    result["category_items"] = {c: sum(1 for r in paired if r["category"] == c) for c in categories}
    result["routed_to"] = dict(Counter(r["routed_expert"] for r in paired).most_common())
    if any(r.get("routed_steps") for r in paired):
        result["cascade_steps"] = dict(Counter(max(len(_asked(r)), 1) for r in paired).most_common())
    return result


def format_comparison(result: dict[str, Any]) -> str:
    categories = list(result["category_items"])
    head = f"{'column':<10}{'quality':>9}{'params B':>10}{'latency s':>11}" + "".join(f"{c:>11}" for c in categories)
    lines = [head]
    for column, entry in result["columns"].items():
        cells = "".join(f"{entry['by_category'][c]:>11.3f}" for c in categories)
        latency = "-" if entry["avg_latency_s"] is None else f"{entry['avg_latency_s']:.2f}"
        lines.append(f"{column:<10}{entry['quality']:>9.3f}{entry['avg_params_b']:>10.3f}{latency:>11}{cells}")
    lines.append(f"{'n':<40}" + "".join(f"{result['category_items'][c]:>11}" for c in categories))
    picks = ", ".join(f"{e} {n}" for e, n in result["routed_to"].items())
    lines.append(f"{result['items']} items scored in every column ({result['left_out']} left out); routed to: {picks}")
    return "\n".join(lines)
