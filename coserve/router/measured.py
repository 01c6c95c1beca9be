"""A library's category -> expert map solved from measured outcomes, not written by hand.

    read    -> outcome rows (``coserve outcomes`` JSONL: ``id``, ``category``, ``scores``): only ids,
               categories and scores are needed, so a shipped file holds no prompt text
    table   -> S[k, e]: mean score of expert e on category k's rows (rows an expert has no score on
               are left out of its mean); n[k]: rows per category
    solve   -> the budget optimiser (``mapping.solve_map``, MILP) over category weights ``p`` (the
               library's ``router.priors``, else equal) and expert costs (params or price)

    report  -> the maps at several budgets, each single expert and the quality/cost front
               (``coserve map``)

``with_measured_map`` is called where a library is made ready to route (the engine builder, the
router loader, the CLI), so the library file itself stays a plain read. This module knows nothing
about serving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coserve.config import LibraryConfig
from coserve.errors import ConfigError, InfeasibleConstraints
from coserve.jsonl import read_rows
from coserve.router.mapping import MapPoint, pareto, solve_map

__all__ = ["MeasuredMaps", "MeasuredTable", "measure_maps", "read_table", "with_measured_map"]


@dataclass(frozen=True)
class MeasuredTable:
    """Per-category mean scores of each expert, from an outcome file."""

    categories: tuple[str, ...]
    experts: tuple[str, ...]
    S: np.ndarray  # [K, E] mean score
    n: np.ndarray  # [K, E] scored rows behind each mean

    def solve(self, p: np.ndarray, cost: np.ndarray, budget: float | None) -> dict[str, str]:
        """The map maximising expected score with expected cost <= ``budget`` (None: the best per category)."""
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
        rows = read_rows(path)
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


def _inputs(library: LibraryConfig) -> tuple[MeasuredTable, np.ndarray, np.ndarray, float | None]:
    """(table, category weights, expert costs, budget) of a library whose map comes from outcomes."""
    router = library.router
    assert router.outcomes is not None
    base = library.path.parent if library.path is not None else Path.cwd()
    categories = list(library.categories)
    table = read_table(base / router.outcomes, categories, library.expert_names)
    p = np.array([router.priors.get(c, 0.0) if router.priors else 1.0 for c in categories])
    if router.budget.avg_price is not None:
        cost = np.array([e.price.mean for e in library.experts])
        return table, p, cost, router.budget.avg_price
    cost = np.array([e.params_b for e in library.experts], dtype=float)
    return table, p, cost, router.budget.avg_params_b


def with_measured_map(library: LibraryConfig) -> LibraryConfig:
    """The library with ``router.map`` solved from its outcome file under its budget (unchanged when
    it names no ``router.outcomes`` or the map is already solved); ConfigError when infeasible."""
    if library.router.outcomes is None or library.router.map:
        return library
    table, p, cost, budget = _inputs(library)
    try:
        solved = table.solve(p, cost, budget)
    except InfeasibleConstraints as exc:
        raise ConfigError(f"{library.path}: router.budget: {exc}") from None
    return library.model_copy(update={"router": library.router.model_copy(update={"map": solved})})


@dataclass(frozen=True)
class MeasuredMaps:
    """What ``coserve map`` shows: the table, its maps at budgets, each single expert and the front."""

    table: MeasuredTable
    weights: np.ndarray  # [K] category weights, summing to 1
    unit: str  # the cost unit: "B params" or "USD/M tokens"
    maps: list[dict[str, Any]]  # {budget, map, quality, avg_cost} per budget asked for
    singles: dict[str, tuple[float, float]]  # expert -> (average cost, quality) of sending it everything
    front: list[MapPoint]  # the quality/cost frontier over every budget

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``coserve map --json``)."""
        return {
            "categories": list(self.table.categories),
            "experts": list(self.table.experts),
            "S": self.table.S.round(4).tolist(),
            "n": self.table.n.astype(int).tolist(),
            "maps": self.maps,
            "singles": {n: {"avg_cost": c, "quality": q} for n, (c, q) in self.singles.items()},
            "front": [{"avg_cost": float(m.avg_cost), "quality": float(m.quality)} for m in self.front],
        }


def measure_maps(library: LibraryConfig, budgets: Sequence[float] = ()) -> MeasuredMaps:
    """The measured table of a library whose map comes from outcomes, its maps at its own budget and
    at ``budgets``, each single expert, and the quality/cost front."""
    if library.router.outcomes is None:
        where = (
            "takes its map from a trained router (router.trained)"
            if library.router.trained
            else "writes router.map by hand"
        )
        raise ConfigError(f"{library.path}: this library {where}: coserve map needs router.outcomes")
    table, p, cost, budget = _inputs(library)
    p = p / p.sum()
    unit = "USD/M tokens" if library.router.budget.avg_price is not None else "B params"

    def point(mapping: dict[str, str]) -> tuple[float, float]:
        cols = [table.experts.index(mapping[c]) for c in table.categories]
        quality = float(sum(w * table.S[k, e] for k, (w, e) in enumerate(zip(p, cols, strict=True))))
        return float(sum(w * cost[e] for w, e in zip(p, cols, strict=True))), quality

    asked: list[float | None] = [budget, *budgets] if budget is not None else [*budgets] or [None]
    maps = []
    for b in asked:
        mapping = table.solve(p, cost, b)
        avg_cost, quality = point(mapping)
        maps.append({"budget": b, "map": mapping, "quality": quality, "avg_cost": avg_cost})
    singles = {e: point(dict.fromkeys(table.categories, e)) for e in table.experts}
    return MeasuredMaps(table, p, unit, maps, singles, pareto(p, table.S, cost))
