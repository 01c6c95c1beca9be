#!/usr/bin/env python
"""Print docs/eval.md's result tables from the `coserve eval` reports under docs/data/.

    .venv/bin/python scripts/eval_tables.py docs/data/eval-llmrouter.json docs/data/eval-mt_bench.json ...
    .venv/bin/python scripts/eval_tables.py --at 10.2,51 docs/data/eval-llmrouter*.json

``--at B1,B2`` prints one table instead: each report's routers' quality at those average active
parameter budgets (billions; linear interpolation on the pooled Pareto front, the harness's
``quality_at_budget``), beside the best single expert within each budget.

The docs quote these tables; the numbers are the reports', rounded, so they can be re-derived.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from coserve.bench.script_run import run_script
from coserve.cli.common import comma_numbers


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


def at_budgets(paths: list[Path], budgets: list[float]) -> str:
    """Quality at each params budget of every router of every report, and the best single expert."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from coserve.eval.metrics import quality_at_budget

    head = " | ".join(f"quality @ <= {b:g}B" for b in budgets)
    rows = [f"| report (embedder) | router | {head} |", "|---|---|" + "---|" * len(budgets)]
    baselines: dict[str, Any] = {}
    for path in paths:
        report = json.loads(path.read_text())
        baselines = report["baselines"]
        for name, router in report["routers"].items():
            points = [p for p in router["points"] if p["axis"] == "params"]
            xs, qs = [p["avg_params_b"] for p in points], [p["quality"] for p in points]
            cells = " | ".join(_num(quality_at_budget(xs, qs, b)) for b in budgets)
            embedder = report["meta"].get("embedders", {}).get(name, report["meta"]["embedder"])
            rows.append(f"| `{path.name}` ({embedder}) | {name} | {cells} |")
    singles = {k: b for k, b in baselines.items() if k not in ("random", "oracle")}
    cells = []
    for budget in budgets:
        within = [(b["quality"], k) for k, b in singles.items() if b["avg_params_b"] <= budget]
        cells.append(f"{max(within)[0]:.3f} ({max(within)[1]})" if within else "–")
    rows.append(f"| best single expert | – | {' | '.join(cells)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="`coserve eval --json` reports")
    budgets = comma_numbers(float, "10.2,51")
    parser.add_argument("--at", type=budgets, help="B1,B2: one table of quality at these budgets instead")
    args = parser.parse_args()
    if args.at is not None:
        print(at_budgets(args.reports, args.at))
    else:
        print("\n".join(tables(path) for path in args.reports))


if __name__ == "__main__":
    run_script(main)
