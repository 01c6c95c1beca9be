"""What an outcome file holds, before any work is started on it (``coserve check-data``).

``check_outcomes`` reads a file with the readers and rules of ``coserve.eval.data`` (those ``train``,
``eval``, ``eval-trained`` and ``bench adapt`` read it with) and embeds nothing. It counts rows,
distinct prompts, experts and categories; the rows with a score in each (category, expert) cell, and
the cells that are empty or thin; the experts the file scores that the experts file lacks, and the
reverse; and, for each command, whether it would take the file, by the command's own checks
(``CommandCheck``: a callable that raises ConfigError where the command would refuse). Every bad row
is listed as the commands list it. This module knows nothing about routers or the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coserve.errors import ConfigError
from coserve.eval.data import (
    ExpertCosts,
    OutcomeSet,
    check_foldable,
    distinct_prompts,
    load_outcomes,
    read_outcome_rows,
    sparse_experts,
)

__all__ = ["THIN_ROWS", "CommandCheck", "check_outcomes", "fit_check", "format_check"]

THIN_ROWS = 10  # a cell's mean of 0/1 scores over fewer rows is +-0.16 (one standard error) or worse
EVAL_FOLDS = 5  # coserve eval's default --folds

# The file's path and usable rows -> a note (None: nothing to add), or ConfigError where the command
# would refuse them.
CommandCheck = Callable[[str, OutcomeSet], str | None]


def _two_experts(path: str, outcomes: OutcomeSet) -> None:
    if len(outcomes.experts) < 2:
        raise ConfigError(f"{path}: scores of {list(outcomes.experts)} only; a router needs two experts or more")


def fit_check(folds: int | None) -> CommandCheck:
    """The check ``train`` (``folds`` None: fitted on every row) or ``eval`` (``folds`` grouped folds,
    seed 0) runs before embedding; a file of one category is fit for the per-prompt routers only."""

    def check(path: str, outcomes: OutcomeSet) -> str | None:
        _two_experts(path, outcomes)
        check_foldable(path, outcomes.prompts, folds)
        if len(set(outcomes.categories)) < 2:
            return "one category: the per-prompt routers (prompt-*) only; a category classifier needs two or more"
        return None

    return check


def _cells(rows: list[Any], experts: list[str]) -> dict[str, dict[str, int]]:
    """Rows with a usable score (a number in [0, 1]) per category and expert, over every row with a category."""
    cells: dict[str, dict[str, int]] = {}
    for _, obj in rows:
        if not isinstance(obj, dict) or not isinstance(obj.get("category"), str) or not obj["category"]:
            continue
        scores = obj["scores"] if isinstance(obj.get("scores"), dict) else {}
        cell = cells.setdefault(obj["category"], dict.fromkeys(experts, 0))
        for expert, value in scores.items():
            if expert in cell and isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
                cell[expert] += 1
    return cells


def _experts_file(outcomes: OutcomeSet, costs: ExpertCosts, path: str) -> dict[str, Any]:
    """The experts file against the file's experts, as train, eval and bench adapt compare them."""
    out: dict[str, Any] = {
        "file": costs.source,
        "not_scored": [name for name in costs.names if name not in outcomes.experts],
        "without_entry": [name for name in outcomes.experts if name not in costs.names],
        "refusal": None,
    }
    try:
        costs.aligned(outcomes.experts, scored_in=path).budget_axis(None)
    except ConfigError as exc:
        out["refusal"] = exc.message
    return out


def check_outcomes(
    path: str | Path,
    costs: ExpertCosts | None = None,
    commands: Mapping[str, CommandCheck] | None = None,
    thin: int = THIN_ROWS,
) -> dict[str, Any]:
    """The summary of one outcome file (JSON-able); ``refused`` says why the commands refuse it, None if
    none refuses it as such (``fit`` says which command would take it, by ``commands``' checks)."""
    path = str(path)
    report: dict[str, Any] = {"file": path, "refused": None, "bad_rows": []}
    try:
        outcomes, problems = load_outcomes(path, on_bad="skip")
        rows = read_outcome_rows(Path(path))
    except ConfigError as exc:  # the file as a whole: missing, not UTF-8, no experts, no usable row
        report["refused"] = exc.message
        return report
    report["bad_rows"] = [
        {"line": p.line, "id": p.id, "field": p.field, "reason": p.reason, "listed": str(p)} for p in problems
    ]
    experts = list(outcomes.experts)
    Y = outcomes.scores
    categories, counts = np.unique(np.asarray(outcomes.categories), return_counts=True)
    report.update(
        rows=len(rows),
        usable_rows=len(outcomes),
        distinct_prompts=distinct_prompts(outcomes.prompts),
        score_range=[float(np.nanmin(Y)), float(np.nanmax(Y))],
        experts={
            e: {"rows": int(np.isfinite(Y[:, j]).sum()), "mean": round(float(np.nanmean(Y[:, j])), 4)}
            for j, e in enumerate(experts)
        },
        categories={str(c): int(n) for c, n in zip(categories, counts, strict=True)},
        sparse_experts=sparse_experts(rows, experts, False) if problems else [],
    )
    everyone = experts + [e for e in (costs.names if costs is not None else ()) if e not in experts]
    cells = _cells(rows, everyone)
    report["cells"] = cells
    report["empty_cells"] = [[c, e] for c, row in cells.items() for e, n in row.items() if n == 0]
    report["thin_cells"] = [[c, e, n] for c, row in cells.items() for e, n in row.items() if 0 < n < thin]
    reasons = [f"{len(problems)} bad row{'s' if len(problems) != 1 else ''}"] if problems else []
    if costs is not None:
        report["experts_file"] = _experts_file(outcomes, costs, path)
        if report["experts_file"]["refusal"]:
            reasons.append(report["experts_file"]["refusal"])
    report["refused"] = "; ".join(reasons) or None
    report["fit"] = {}
    for command, check in (commands or {}).items():
        try:
            report["fit"][command] = {"fit": True, "why": check(path, outcomes)}
        except ConfigError as exc:
            report["fit"][command] = {"fit": False, "why": exc.message}
    return report


def format_check(report: Mapping[str, Any], thin: int = THIN_ROWS) -> str:
    """The summary as the command prints it: the counts, the cells, the verdicts, then every bad row."""
    if "rows" not in report:
        return f"{report['file']}: refused: {report['refused']}"
    low, high = report["score_range"]
    lines = [
        f"{report['file']}: {report['rows']} rows, {report['usable_rows']} usable, {len(report['bad_rows'])} bad; "
        f"{report['distinct_prompts']} distinct prompts; scores {low:.3f} to {high:.3f}"
    ]
    experts = ", ".join(f"{e} ({v['rows']} rows, mean {v['mean']:.3f})" for e, v in report["experts"].items())
    lines.append(f"  experts ({len(report['experts'])}): {experts}")
    categories = ", ".join(f"{c} ({n})" for c, n in report["categories"].items())
    lines.append(f"  categories ({len(report['categories'])}): {categories}")
    lines += [f"  {line}" for line in report["sparse_experts"]]
    if report["empty_cells"]:
        lines.append("  empty cells (category x expert): " + ", ".join(f"{c} x {e}" for c, e in report["empty_cells"]))
    if report["thin_cells"]:
        cells = ", ".join(f"{c} x {e} ({n})" for c, e, n in report["thin_cells"])
        lines.append(f"  thin cells (< {thin} rows): {cells}")
    if "experts_file" in report:
        ef = report["experts_file"]
        if ef["not_scored"]:
            lines.append(f"  {ef['file']} lists {ef['not_scored']}, which this file does not score: left out")
        if ef["refusal"]:
            lines.append(f"  refused by train, eval and bench adapt: {ef['refusal']}")
    if report["bad_rows"] and report["fit"]:
        lines.append("  the commands refuse the bad rows (--on-bad refuse, the default); with --on-bad skip:")
    for command, verdict in report["fit"].items():
        why = f": {verdict['why']}" if verdict["why"] else ""
        lines.append(f"  {command}: {'fit' if verdict['fit'] else 'not fit'}{why}")
    lines += [f"  bad row {row['listed']} [{row['field'] or 'line'}]" for row in report["bad_rows"]]
    return "\n".join(lines)
