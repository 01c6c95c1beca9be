"""The tables ``coserve eval`` and ``eval-trained`` print, as rows of the report's own figures, and their CSV files.

A table is a header (the report's key names) and rows of plain values; ``--csv DIR`` writes each as
``DIR/<name>.csv`` (names in docs/eval.md), numbers as the JSON report holds them and an empty cell for
a missing one, so a CSV row and the report agree figure for figure.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from coserve.errors import ConfigError

__all__ = ["Table", "check_csv_dir", "eval_tables", "summary_lines", "trained_tables", "write_tables"]

Table = tuple[list[str], list[list[Any]]]
BASELINE_COLUMNS = ["name", "quality", "avg_params_b", "avg_price"]
MARGIN_COLUMNS = ["margin", "interval_low", "interval_high"]
SUMMARY_FIGURES = ("auc_params", "auc_price", "oracle_gap_closed", "apgr", "cpt50", "cpt80", "cpt95")
SUMMARY_COLUMNS = ["router", "figure", "value", "interval_low", "interval_high", "undefined_resamples", "reference",
                   "difference", "difference_low", "difference_high", "difference_undefined_resamples"]  # fmt: skip


def check_csv_dir(folder: str | None) -> None:
    """Refuse a ``--csv`` folder the tables could not be written in, before any work: a file, or a folder
    (or the nearest one above it that exists, where the rest would be made) that is not writable."""
    if folder is None:
        return
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--csv {folder}: a file; name a folder")
    nearest = path
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir() or not os.access(nearest, os.W_OK):
        raise ConfigError(f"--csv {folder}: {nearest} is not a writable folder")


def write_tables(folder: str, tables: dict[str, Table]) -> list[Path]:
    """Each table as ``folder/<name>.csv``, with its header row; the files written."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    written = []
    for name, (header, rows) in tables.items():
        path = Path(folder) / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([["" if v is None else v for v in row] for row in rows])
        written.append(path)
    return written


def _margin_cells(entry: dict[str, Any] | None) -> list[Any]:
    if entry is None:
        return [None, None, None]
    return [entry["margin"], *entry["interval_95"]]


def eval_tables(report: dict[str, Any]) -> dict[str, Table]:
    """``coserve eval``'s two tables: the baselines, and each router's headline metrics with the interval of
    its margin over the best single expert at that expert's cost."""
    baselines = [[name, b["quality"], b["avg_params_b"], b["avg_price"]] for name, b in report["baselines"].items()]
    header = ["router", "cost_axis", "auc", "quality_at_best_single_budget", "min_budget_for_best_single_quality",
              "oracle_gap_closed", "apgr", "best_single", *MARGIN_COLUMNS]  # fmt: skip
    rows = []
    for name, entry in report["routers"].items():
        m = entry["metrics"]
        headline = m.get("margin_at_best_single_budget")
        rows.append([
            name, m["cost_axis"], m.get("auc_" + m["cost_axis"]), m["quality_at_best_single_budget"],
            m["min_budget_for_best_single_quality"], m["oracle_gap_closed"], m.get("apgr"),
            None if headline is None else headline["expert"], *_margin_cells(headline),
        ])  # fmt: skip
    return {
        "eval-baselines": (BASELINE_COLUMNS, baselines),
        "eval-routers": (header, rows),
        "eval-summary": (SUMMARY_COLUMNS, _summary_rows(report)),
    }


def _summary_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per router and summary figure it has: the figure, its interval over the resampled prompts, and
    its paired difference from the reference router (empty cells with ``--no-intervals``)."""
    rows = []
    for name, entry in report["routers"].items():
        m = entry["metrics"]
        ends, undefined = m.get("summary_intervals_95", {}), m.get("summary_undefined_resamples", {})
        versus = m.get("difference_from_reference") or {"router": None, "figures": {}}
        for figure in (f for f in SUMMARY_FIGURES if f in m):
            d = versus["figures"].get(figure)
            rows.append([
                name, figure, m[figure], *ends.get(figure, [None, None]), undefined.get(figure), versus["router"],
                *([None] * 4 if d is None else [d["difference"], *d["interval_95"], d["undefined_resamples"]]),
            ])  # fmt: skip
    return rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The printed summary: each router's AUC on the primary axis, ``oracle_gap_closed`` and (two experts) APGR,
    each with its 95% interval and its paired difference from the reference router; none without intervals."""
    reference = report["meta"].get("reference")
    if reference is None:
        return []
    figures = [f"auc_{report['meta']['primary_axis']}", "oracle_gap_closed", "apgr"]
    figures = [f for f in figures if any(f in e["metrics"] for e in report["routers"].values())]
    head = "".join(f" {f + ' [95%]':<24} {'- ref [95%]':<24}" for f in figures)
    lines = [f"summary figures, and each less the reference (ref: {reference}) over the same resampled prompts:",
             f"{'router':<26}{head}".rstrip()]  # fmt: skip
    for name, entry in report["routers"].items():
        m = entry["metrics"]
        ends = m.get("summary_intervals_95", {})
        versus = (m.get("difference_from_reference") or {"figures": {}})["figures"]
        cells = []
        for f in figures:
            d = versus.get(f)
            cells.append(f" {_with_interval(m.get(f), ends.get(f), ''):<24}")
            cells.append(f" {_with_interval(d and d['difference'], d and d['interval_95'], '+'):<24}")
        lines.append((f"{name:<26}" + "".join(cells)).rstrip())
    return lines


def _with_interval(value: float | None, ends: list[float | None] | None, sign: str) -> str:
    """``0.812 [0.801, 0.823]`` (``sign`` '+': signed, for a difference); ``-`` for what is missing."""
    if value is None:
        return "-"
    low, high = ("-" if x is None else f"{x:{sign}.3f}" for x in (ends or [None, None]))
    return f"{value:{sign}.3f} [{low}, {high}]"


def trained_tables(report: dict[str, Any]) -> dict[str, Table]:
    """``coserve eval-trained``'s tables: each router's quality and costs beside the single experts', its
    margins with their intervals, and with two routers the paired difference B - A."""
    scored = report["routers"] if "routers" in report else [report]
    scores, margins = [], []
    for i, one in enumerate(scored):
        label = f"router {'AB'[i]}" if len(scored) > 1 else "router"
        r = one["router"]
        scores.append([f"{label} ({r['kind']})", r["quality"], r["avg_params_b"], r["avg_price"]])
        for key in ("best_single", "best_single_affordable"):
            entry = one[key]
            margins.append([label, key, None if entry is None else entry["expert"], *_margin_cells(entry)])
    for name, b in scored[0]["baselines"].items():
        if name not in ("random", "oracle"):
            scores.append([name, b["quality"], b["avg_params_b"], b["avg_price"]])
    tables: dict[str, Table] = {
        "trained-scores": (BASELINE_COLUMNS, scores),
        "trained-margins": (["router", "over", "expert", *MARGIN_COLUMNS], margins),
    }
    if "difference" in report:
        d = report["difference"]
        rows = [[k, d[k]["difference"], *d[k]["interval_95"]] for k in ("quality", "avg_params_b", "avg_price")]
        rows.append(["chose_differently", d["chose_differently"], None, None])
        tables["trained-difference"] = (["figure", "b_minus_a", "interval_low", "interval_high"], rows)
    return tables
