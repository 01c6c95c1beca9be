"""A library's category -> expert map solved from measured outcomes, not written by hand.

    read    -> outcome rows (``coserve outcomes`` JSONL: ``id``, ``category``, ``scores``): only ids,
               categories and scores are needed, so a shipped file holds no prompt text
    table   -> S[k, e]: mean score of expert e on category k's rows (rows an expert has no score on
               are left out of its mean); n[k]: rows per category
    solve   -> the budget optimiser (``mapping.solve_map``, MILP) over category weights ``p`` (the
               library's ``router.priors``, else equal) and expert costs (params or price)

This module knows nothing about serving; ``config.load_library`` calls it when a library names
``router.outcomes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coserve.errors import ConfigError
from coserve.eval.data import json_rows

__all__ = ["MeasuredTable", "read_table"]


@dataclass(frozen=True)
class MeasuredTable:
    """Per-category mean scores of each expert, from an outcome file."""

    categories: tuple[str, ...]
    experts: tuple[str, ...]
    S: np.ndarray  # [K, E] mean score
    n: np.ndarray  # [K, E] scored rows behind each mean

    def solve(self, p: np.ndarray, cost: np.ndarray, budget: float | None) -> dict[str, str]:
        """The map maximising expected score with expected cost <= ``budget`` (None: the best per category)."""
        from coserve.router.mapping import solve_map

        budget = float(cost.max()) if budget is None else budget
        assignment = solve_map(p, self.S, cost, budget)
        return {c: self.experts[int(e)] for c, e in zip(self.categories, assignment, strict=True)}

    def format(self) -> str:
        """The table as text: one row per category, one column per expert, n per row."""
        head = f"{'category':<12}" + "".join(f"{e:>10}" for e in self.experts) + f"{'n':>6}"
        rows = [head]
        for k, category in enumerate(self.categories):
            cells = "".join(f"{self.S[k, e]:>10.3f}" for e in range(len(self.experts)))
            rows.append(f"{category:<12}{cells}{int(self.n[k].max()):>6}")
        return "\n".join(rows)


def read_table(path: Path, categories: Sequence[str], experts: Sequence[str]) -> MeasuredTable:
    """The per-category table of ``experts`` over ``categories`` from the outcome file at ``path``.

    ConfigError names the file and line for a malformed row, and names any category or expert the
    file has no score for (the map would otherwise be solved on nothing).
    """
    index = {c: k for k, c in enumerate(categories)}
    columns = {e: j for j, e in enumerate(experts)}
    total = np.zeros((len(categories), len(experts)))
    count = np.zeros((len(categories), len(experts)))
    try:
        rows = json_rows(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"router.outcomes: cannot read {path}: {exc}") from None
    for number, row in rows:
        where = f"router.outcomes: {path}:{number}"
        if isinstance(row, str):
            raise ConfigError(f"{where}: {row}")
        if not isinstance(row.get("category"), str) or not isinstance(row.get("scores"), dict):
            raise ConfigError(f"{where}: a row needs a string category and a scores object")
        k = index.get(row["category"])
        if k is None:
            continue  # a category this library does not route to
        for expert, score in row["scores"].items():
            j = columns.get(expert)
            if j is None:
                continue  # an expert not in this library
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ConfigError(f"{where}: scores.{expert} must be a finite number")
            total[k, j] += float(score)
            count[k, j] += 1
    empty = [f"{categories[k]}/{experts[j]}" for k, j in zip(*np.nonzero(count == 0), strict=True)]
    if empty:
        raise ConfigError(
            f"router.outcomes: {path} has no scores for (category/expert) {', '.join(empty)}: measure them "
            "with coserve outcomes, or write router.map by hand"
        )
    return MeasuredTable(tuple(categories), tuple(experts), total / count, count)
