#!/usr/bin/env python
"""Print docs/eval.md's result tables from the `coserve eval` reports under docs/data/.

    .venv/bin/python scripts/eval_tables.py docs/data/eval-llmrouter.json docs/data/eval-mt_bench.json ...

The docs quote these tables; the numbers are the reports', rounded, so they can be re-derived.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ece(m: dict[str, Any]) -> str:
    if m.get("ece") is None:
        return "–"
    return f"{_num(m['ece'])} → {_num(m.get('ece_calibrated'))}"


def _params_table(report: dict[str, Any]) -> list[str]:
    best = max((b for k, b in report["baselines"].items() if k not in ("random", "oracle")), key=lambda b: b["quality"])
    rows = [
        f"| router | AUC (params) | AUC (price) | quality @ {best['avg_params_b']:g}B | min avg params for "
        f"{best['quality']:.3f} (ratio) | oracle gap closed | category acc. | ECE → calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, router in report["routers"].items():
        m = router["metrics"]
        need = m.get("min_budget_for_best_single_quality")
        need_s = "–" if need is None else f"{need:.1f}B ({m['min_budget_ratio_to_best_single']:.2f})"
        rows.append(
            f"| {name} | {_num(m.get('auc_params'))} | {_num(m.get('auc_price'))} | "
            f"{_num(m['quality_at_best_single_budget'])} | {need_s} | {_num(m['oracle_gap_closed'], 2)} | "
            f"{_num(m.get('category_accuracy'))} | {_ece(m)} |"
        )
    return rows


def _pair_table(report: dict[str, Any]) -> list[str]:
    rows = [
        "| router | APGR | CPT(50%) | CPT(80%) | CPT(95%) | AUC (price) | quality @ best single's price "
        "| category acc. | ECE → calibrated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, router in report["routers"].items():
        m = router["metrics"]
        cpts = " | ".join("–" if m.get(k) is None else f"{m[k]:.1f}%" for k in ("cpt50", "cpt80", "cpt95"))
        rows.append(
            f"| {name} | {_num(m.get('apgr'))} | {cpts} | {_num(m.get('auc_price'))} | "
            f"{_num(m['quality_at_best_single_budget'])} | {_num(m.get('category_accuracy'))} | {_ece(m)} |"
        )
    return rows


def _baselines(report: dict[str, Any]) -> list[str]:
    rows = ["| baseline | quality | avg params (B) | avg price (USD/M) |", "|---|---|---|---|"]
    for name, b in report["baselines"].items():
        rows.append(f"| {name} | {b['quality']:.3f} | {_num(b['avg_params_b'], 1)} | {_num(b['avg_price'])} |")
    return rows


def tables(path: Path) -> str:
    """The markdown tables of one report, headed by its data set and provenance."""
    report = json.loads(path.read_text())
    prov = report.get("provenance", {})
    name = path.stem.removeprefix("eval-")
    main = _params_table(report) if report["meta"].get("primary_axis") == "params" else _pair_table(report)
    head = f"### {name}\n\n`{path}` (commit {prov.get('commit', '?')[:7]}, {prov.get('date', '?')[:10]}):\n"
    return "\n".join([head, *main, "", *_baselines(report), ""])


if __name__ == "__main__":
    print("\n".join(tables(Path(arg)) for arg in sys.argv[1:]))
