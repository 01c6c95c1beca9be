"""The cascade's start gate judged by grouped cross-validation on rows already measured (issue 16, item 3).

    python scripts/cascade_gate_study.py --data docs/data/cascade8-train.jsonl [--data ...] \
        --plan docs/data/cascade9-plan.json --seeds 0,1,2,3,4 --out docs/data/cascade11-gate-cv.json

Every expert's answer to every item is in the rows, so replaying a cascade on them is exact. Rows
of several files are pooled (an id seen twice: the later file's row); rows without ``prompt`` get it
rebuilt from their suite in memory (coserve.outcomes.prompts; nothing is written back). The cascade
is the default library with the plan's starts (``routing.cascade.categories``), threshold and
max_steps. Per seed, items are dealt into grouped folds; the answer check and the start gate are
both fitted on the other folds. Out of fold, per suite and pooled: single choice, the cascade as it
is, the cascade with the gate (break-even limit params(start) / params(next), and a sweep of limits),
the perfect check with and without the gate, a perfect gate (skip exactly when the start expert is
wrong), and the gate fitted on the other suites only (does it transfer to an unseen suite?).
Quality and mean active parameters count every step asked. A design study on rows that were
already used as held-out sets: not a held-out claim.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.cli.common import at_least, comma_numbers, load_served_library
from coserve.config import LibraryConfig
from coserve.engine.cascade import params_of
from coserve.eval.cascade import StartRule, answers, cross_validate, item_folds, replay
from coserve.eval.cascade_gate import fit_rows, gate_cv, predict_rows
from coserve.outcomes.prompts import with_prompts
from coserve.router.features import FEATURE_NAMES

BASIC_GATE = (*FEATURE_NAMES, "confidence")  # the ablation: the router's cheap features alone, no markers
LIMITS = (0.1, 0.2, 0.25, 0.3, 0.321, 0.35, 0.4, 0.5, 0.6)  # gate limits swept (0.321: 0.494 / 1.54)
Point = dict[str, float]


def suite_of(row: Mapping[str, Any]) -> str:
    return str(row["id"]).rsplit("-", 1)[0]


def pooled_rows(paths: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``paths`` by id (a later file's row replaces an earlier one) and how many were replaced."""
    by_id: dict[str, dict[str, Any]] = {}
    replaced = 0
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                replaced += row["id"] in by_id
                by_id[row["id"]] = row
    return list(by_id.values()), replaced


def columns(
    rows: list[dict[str, Any]],
    library: LibraryConfig,
    plan: Mapping[str, Any],
    probability: Mapping[tuple[str, str], float],
    gate_p: Mapping[str, float],
    others: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """Every column of the study on ``rows`` (one suite, or all); ``others``: more gates by column name."""
    starts, threshold, steps = plan["starts"], plan["threshold"], plan["max_steps"]
    expert = starts["code"]
    perfect = {(str(r["id"]), e): 1.0 if float(s) >= 0.5 else 0.0 for r in rows for e, s in r["scores"].items()}
    right = {str(r["id"]): float(r["scores"][expert]) for r in rows}  # a perfect gate: P = the start's score

    def run(check: Mapping[tuple[str, str], float], gate: StartRule | None) -> dict[str, Any]:
        point = replay(rows, library, check, threshold, steps, starts=starts, gate=gate)
        return {**point["cascade"], "steps": point["steps"], "skipped": point.get("skipped", 0)}

    first = replay(rows, library, probability, threshold, steps, starts=starts)
    params = params_of(library)
    return {
        "items": len(rows),
        "alone": {
            e: {"quality": round(float(np.mean([r["scores"][e] for r in rows])), 4), "avg_params_b": params[e]}
            for e in sorted(params, key=params.get)  # type: ignore[arg-type]
        },
        "single": first["single"],
        "cascade": run(probability, None),
        "gated": run(probability, StartRule(expert, gate_p)),
        "gated_limits": {str(t): run(probability, StartRule(expert, gate_p, t)) for t in LIMITS},
        **{name: run(probability, StartRule(expert, p)) for name, p in others.items()},
        "perfect_check": run(perfect, None),
        "perfect_check_gated": run(perfect, StartRule(expert, gate_p)),
        "perfect_gate": run(probability, StartRule(expert, right, 0.5)),
        "perfect_gate_perfect_check": run(perfect, StartRule(expert, right, 0.5)),
    }


def one_seed(
    rows: list[dict[str, Any]], library: LibraryConfig, plan: Mapping[str, Any], seed: int, folds: int
) -> dict[str, Any]:
    """The study's columns, per suite and pooled, with the check and the gate out of fold for ``seed``."""
    from sklearn.metrics import roc_auc_score

    expert = plan["starts"]["code"]
    data = answers(rows)
    experts = sorted({a.expert for a in data})
    fold_of = item_folds([a.item for a in data], folds, seed)
    oof, check_cv = cross_validate(data, experts, folds, seed)
    probability = {(a.item, a.expert): float(p) for a, p in zip(data, oof, strict=True)}
    gate_p, gate_figures = gate_cv(rows, expert, fold_of)
    suites = sorted({suite_of(r) for r in rows})
    transfer_p: dict[str, float] = {}  # the gate fitted on the other suites only (none with one suite)
    for suite in suites if len(suites) > 1 else ():
        gate = fit_rows([r for r in rows if suite_of(r) != suite], expert, 0.5, 1.0, gate_figures["features"])
        transfer_p.update(predict_rows(gate, [r for r in rows if suite_of(r) == suite]))
    within: dict[str, Any] = {}
    for suite in suites:
        group = [r for r in rows if suite_of(r) == suite]
        y = [float(r["scores"][expert]) >= 0.5 for r in group]
        within[suite] = {
            "good_rate": round(float(np.mean(y)), 4),
            "auc": round(float(roc_auc_score(y, [gate_p[str(r["id"])] for r in group])), 4)
            if 0 < sum(y) < len(y)
            else None,
            "auc_transfer": round(float(roc_auc_score(y, [transfer_p[str(r["id"])] for r in group])), 4)
            if 0 < sum(y) < len(y) and transfer_p
            else None,
        }
    result = {"seed": seed, "check_cv": check_cv, "gate_cv": gate_figures, "gate_within_suite": within}
    basic_p, basic_figures = gate_cv(rows, expert, fold_of, features=BASIC_GATE)
    result["gate_cv_basic_features"] = basic_figures
    others = {"gated_basic_features": basic_p, **({"gated_transfer": transfer_p} if transfer_p else {})}
    result["pooled"] = columns(rows, library, plan, probability, gate_p, others)
    for suite in suites:
        group = [r for r in rows if suite_of(r) == suite]
        result[suite] = columns(group, library, plan, probability, gate_p, others)
    return result


def mean_over_seeds(runs: list[dict[str, Any]], part: str) -> dict[str, Point]:
    """Each column's quality and parameters averaged over the seeds (single choice does not vary), and
    against single choice: the quality difference in points and the share of its parameters."""
    names = [k for k, v in runs[0][part].items() if isinstance(v, dict) and "quality" in v]
    out: dict[str, Point] = {}
    single = runs[0][part]["single"]
    for name in names:
        point = {k: round(float(np.mean([run[part][name][k] for run in runs])), 4) for k in ("quality", "avg_params_b")}
        point["points_vs_single"] = round(100 * (point["quality"] - single["quality"]), 2)
        point["params_vs_single"] = round(point["avg_params_b"] / single["avg_params_b"], 4)
        out[name] = point
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="outcome rows (repeatable, pooled by id)")
    parser.add_argument("--plan", required=True, help="the cascade's plan (scripts/cascade_library.py --plan-out)")
    seeds = comma_numbers(int, "0,1,2")
    parser.add_argument("--seeds", type=seeds, default="0,1,2,3,4", help="fold seeds, comma-separated")
    parser.add_argument("--folds", type=at_least(2), default=5)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", help="the data file to write (provenance); without it, print only")
    args = parser.parse_args()
    raw, replaced = pooled_rows(args.data)
    rows = with_prompts(raw)
    plan = json.loads(Path(args.plan).read_text())
    library = load_served_library(None)
    gate_expert = plan["starts"]["code"]
    runs = [one_seed(rows, library, plan, int(seed), args.folds) for seed in args.seeds]
    parts = ["pooled", *sorted({suite_of(r) for r in rows})]
    summary = {part: mean_over_seeds(runs, part) for part in parts}
    limits = {  # the gate's limit swept: quality and parameters, mean over seeds
        part: {
            t: {
                k: round(float(np.mean([run[part]["gated_limits"][t][k] for run in runs])), 4)
                for k in ("quality", "avg_params_b")
            }
            for t in runs[0][part]["gated_limits"]
        }
        for part in parts
    }
    full_gate = fit_rows(rows, gate_expert, 0.5, 1.0, runs[0]["gate_cv"]["features"])
    payload = {
        "note": args.note,
        "design": "grouped CV replay on rows already used as held-out sets: a design study, not a held-out claim",
        "files": args.data,
        "items": {part: runs[0][part]["items"] for part in parts},
        "rows_replaced_by_a_later_file": replaced,
        "plan": {k: plan[k] for k in ("starts", "threshold", "max_steps")},
        "gate_limit": "params(start) / params(next rung) = 0.494 / 1.54 = 0.3208, unless a limit is named",
        "mean_over_seeds": summary,
        "gate_limits_mean_over_seeds": limits,
        "runs": runs,
        "gate_fitted_on_all_rows": full_gate.state(),
    }
    for part in parts:
        print(f"== {part} ({payload['items'][part]} items; mean over {len(runs)} seeds)")
        for name, point in summary[part].items():
            print(
                f"  {name:<28} quality {point['quality']:.3f}  params {point['avg_params_b']:.3f} B"
                f"  ({point['points_vs_single']:+.1f} points, {100 * point['params_vs_single']:.0f}% of single)"
            )
    for part in parts:
        swept = "  ".join(f"{t}: {v['quality']:.3f}/{v['avg_params_b']:.3f}" for t, v in limits[part].items())
        print(f"limits {part}: {swept}")
    print("gate CV (seed 0):", runs[0]["gate_cv"]["auc"], runs[0]["gate_within_suite"])
    print("gate CV, basic features (seed 0):", runs[0]["gate_cv_basic_features"]["auc"])
    if args.out:
        write_data(Path(args.out), payload, [".venv/bin/python", "scripts/cascade_gate_study.py", *sys.argv[1:]])
        print(f"-> {args.out}")


if __name__ == "__main__":
    run_script(main)
