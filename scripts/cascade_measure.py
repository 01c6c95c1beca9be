"""Cascade vs single-choice routing on the default library (issue 16 part 3): the figures of
docs/outcomes.md, "Cascade vs single choice", from two `coserve outcomes` files.

    python scripts/cascade_measure.py --train TRAIN.jsonl --heldout HELDOUT.jsonl --library CASCADE.yaml \
        --note "..." [--runs "the coserve outcomes commands"]

TRAIN: the check's training sample (rows with signals; disjoint from HELDOUT). HELDOUT: written with
``--routed --library CASCADE.yaml`` (the live cascade is its ``routed`` column). Writes
docs/data/NAME-check.json (the check's grouped-CV figures, with every signal and with the five basic
ones only; the cascade replayed on TRAIN with out-of-fold probabilities; the check itself) and
docs/data/NAME-vs-single.json (the held-out comparison: each expert, the live cascade, the default
library's single choice, and the cascade replayed at a range of thresholds with the check fitted on
TRAIN, with every signal and with the basic ones; with the library's ``start_gate``, the cascade
with the gate too, on TRAIN out of fold and on HELDOUT), both with provenance and with the bound of a
perfect check (an answer accepted exactly when it is right). NAME: ``--name``, default "cascade".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from coserve.bench.provenance import write_data
from coserve.cli.common import load_served_library
from coserve.config import LibraryConfig
from coserve.engine.cascade import Cascade, params_of
from coserve.errors import ConfigError, CoserveError
from coserve.eval.cascade import (
    THRESHOLDS,
    StartRule,
    answers,
    cascade_points,
    check_points,
    oracle_point,
    read_signal_rows,
    replay,
    train_check,
)
from coserve.eval.cascade_gate import gated_points, predict_rows
from coserve.outcomes.compare import compare_routed
from coserve.outcomes.prompts import with_prompts
from coserve.router.check import BASIC_FEATURES, VERIFIER_FEATURES
from coserve.router.policy import decide

DATA = Path(__file__).resolve().parent.parent / "docs" / "data"


def hindsight_map(rows: list[dict[str, Any]], params: dict[str, float]) -> dict[str, Any]:
    """Single choice with the best expert of each routed category on ``rows`` themselves (ties: the
    cheaper): what re-solving the map on this sample would give, a bound chosen in hindsight."""

    def category(row: dict[str, Any]) -> str:
        probabilities = row["router"]["probabilities"]
        return str(row["router"].get("category") or max(probabilities, key=probabilities.get))

    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_category.setdefault(category(row), []).append(row)
    best = {
        c: max(params, key=lambda e: (sum(r["scores"][e] for r in group), -params[e]))
        for c, group in by_category.items()
    }
    chosen = [best[category(r)] for r in rows]
    return {
        "map": best,
        "quality": round(sum(r["scores"][e] for r, e in zip(rows, chosen, strict=True)) / len(rows), 4),
        "avg_params_b": round(sum(params[e] for e in chosen) / len(rows), 4),
    }


def mix_with_single(
    comparison: dict[str, Any], path: str, library: LibraryConfig, default: LibraryConfig
) -> dict[str, Any]:
    """The held-out comparison pooled with rows of another held-out file (e.g. maths) on which the
    cascade library answers by single choice (its category has no cascade start): there the cascade's
    column is single choice's own. Pooled per item: (n1 * q1 + n2 * q2) / (n1 + n2)."""
    params = {e.name: e.params_b for e in library.experts}
    other = compare_routed(path, params, single=default)
    starts = library.routing.cascade.categories if library.routing.cascade else None
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    categories = [decide(r["router"]["probabilities"], library).category for r in rows]
    cascading = len(rows) if starts is None else sum(c in starts for c in categories)  # None: all cascade
    n1, n2 = comparison["items"], other["items"]
    single2 = other["columns"]["single"]

    def pooled(first: dict[str, Any]) -> dict[str, float]:
        return {k: round((n1 * first[k] + n2 * single2[k]) / (n1 + n2), 4) for k in ("quality", "avg_params_b")}

    return {
        "file": path,
        "items": {"heldout": n1, "other": n2},
        "other_rows_in_a_cascading_category": cascading,  # 0: the pooling is exact by construction
        "other_single": {k: single2[k] for k in ("quality", "avg_params_b")},
        "single": pooled(comparison["columns"]["single"]),
        "cascade_live": pooled(comparison["columns"]["routed"]),
    }


def gated_on_heldout(held: list[dict[str, Any]], library: LibraryConfig, cascade: Cascade) -> dict[str, Any]:
    """The library's cascade with its start gate (fitted on TRAIN, as the library ships it) replayed on
    the held-out rows at each threshold, and a perfect check with the same gate. Prompts missing from
    the rows are rebuilt from their suites in memory (coserve.outcomes.prompts)."""
    assert cascade.gate is not None
    rows = with_prompts(held)
    rule = StartRule(cascade.gate.expert, predict_rows(cascade.gate, rows), cascade.settings.start_gate_threshold)
    data = answers(rows)
    checked = cascade.check.predict_proba([a.signals for a in data], [a.expert for a in data])
    probability = {(a.item, a.expert): float(v) for a, v in zip(data, checked, strict=True)}
    steps = cascade.settings.max_steps
    perfect = {(str(r["id"]), e): 1.0 if float(s) >= 0.5 else 0.0 for r in rows for e, s in r["scores"].items()}
    return {
        "points": [replay(rows, library, probability, t, steps, gate=rule) for t in THRESHOLDS],
        "oracle": replay(rows, library, perfect, 0.5, steps, gate=rule),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, action="append", help="the check's rows (repeatable; an id once)")
    parser.add_argument("--heldout", help="the held-out run (--routed); without it, only NAME-check.json")
    parser.add_argument("--library", required=True, help="the cascade library the held-out run used")
    parser.add_argument("--note", default="", help="how the runs were made (machine load, interruptions)")
    parser.add_argument("--runs", default="", help="the coserve outcomes commands that wrote the two files")
    parser.add_argument("--out-dir", default=str(DATA), help="where the two data files go (default docs/data)")
    parser.add_argument(
        "--mix-single",
        help="held-out rows of other suites where the library answers by single choice: pooled figures "
        "(needs --heldout)",
    )
    parser.add_argument("--name", default="cascade", help="the data files' name: NAME-check.json, NAME-vs-single.json")
    args = parser.parse_args()
    if args.mix_single and not args.heldout:  # the pooled figures pool the held-out run's with these rows
        parser.error("--mix-single needs --heldout (it pools the held-out run's figures with its rows)")
    command = [Path(sys.argv[0]).name, *sys.argv[1:]]
    try:
        files = measure(args)
    except CoserveError as exc:  # a missing or malformed file, a library not in cascade mode: nothing written
        print(f"cascade_measure: error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    for name, payload in files.items():  # written only once every figure is computed
        write_data(Path(args.out_dir) / f"{args.name}-{name}.json", payload, command)


def measure(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The data files' payloads by name ("check", and with ``--heldout`` "vs-single"); prints the figures."""
    library = load_served_library(args.library)
    cascade = Cascade.from_library(library)
    if cascade is None:
        raise ConfigError(f"{args.library}: not a cascade library (routing.mode: cascade)")
    rows = read_signal_rows(args.train)
    experts = sorted({e for row in rows for e in row["signals"]})
    check, figures, _, _ = train_check(rows, experts)
    basic_check, basic_figures, _, _ = train_check(rows, experts, features=BASIC_FEATURES)
    without_examples = (*BASIC_FEATURES, *VERIFIER_FEATURES)  # session 8's signals: no examples run
    plain_check, plain_figures, _, _ = train_check(rows, experts, features=without_examples)
    steps = cascade.settings.max_steps
    on_train = cascade_points(rows, library, max_steps=cascade.settings.max_steps)["points"]
    default = load_served_library(None)
    chosen = [row["scores"][decide(row["router"]["probabilities"], default).expert] for row in rows]
    single = {
        "quality": round(sum(chosen) / len(chosen), 4),
        "avg_params_b": round(
            sum(default.expert(decide(r["router"]["probabilities"], default).expert).params_b for r in rows)
            / len(rows),
            4,
        ),
    }
    files: dict[str, dict[str, Any]] = {
        "check": {
            "note": args.note,
            "runs": args.runs,
            "cv": figures,
            "cv_basic_signals": basic_figures,  # the same check reading the five basic signals only
            "cv_without_examples": plain_figures,  # the same check without the examples signals
            "replay_on_train_basic_signals": cascade_points(rows, library, max_steps=steps, features=BASIC_FEATURES)[
                "points"
            ],
            "oracle_on_train": oracle_point(rows, library, steps),  # a perfect check, the cascade library's ladder
            "default_oracle_on_train": oracle_point(rows, default, steps),
            "replay_on_train": on_train,  # "single" there: the cascade library's first step alone
            "default_single_on_train": single,  # the default library's single choice on the same rows
            "hindsight_map_on_train": hindsight_map(rows, params_of(default)),
            # the default library itself in cascade mode (its own map first, fallback large), same check
            "default_cascade_on_train": cascade_points(rows, default, max_steps=cascade.settings.max_steps)["points"],
            # FrugalGPT's plain cascade, no router: general, coder, large in turn
            "plain_cascade_on_train": cascade_points(rows, None, params_b=params_of(default))["points"],
            "check": check.state(),
            # with the library's start gate (routing.cascade.start_gate): check and gate out of fold
            **(
                {
                    "gated_on_train": gated_points(
                        with_prompts(rows),
                        library,
                        cascade.gate.expert,
                        cascade.settings.start_gate_threshold,
                        max_steps=steps,
                    )
                }
                if cascade.gate is not None
                else {}
            ),
        }
    }
    best = oracle_point(rows, library, steps)["cascade"]
    print(f"check's sample: single choice {single['quality']:.3f} at {single['avg_params_b']:.3f} B; ", end="")
    print(f"a perfect check {best['quality']:.3f} at {best['avg_params_b']:.3f} B")
    print(f"check: AUC {figures['auc']} (grouped CV on {figures['items']} items), {basic_figures['auc']} on the basic")
    if not args.heldout:
        return files
    params = {e.name: e.params_b for e in library.experts}
    comparison = compare_routed(args.heldout, params, single=default)
    held = read_signal_rows([args.heldout])
    data = answers(held)
    predicted = cascade.check.predict_proba([a.signals for a in data], [a.expert for a in data])
    probability = {(a.item, a.expert): float(p) for a, p in zip(data, predicted, strict=True)}
    replayed = check_points(held, library, cascade.check, cascade.settings.max_steps)
    payload = {
        "note": args.note,
        "runs": args.runs,
        "cascade_settings": cascade.settings.model_dump(mode="json"),
        "comparison": comparison,  # "routed": the live cascade; "single": the default library's choice
        "replay_on_heldout": replayed,  # "single" here: the cascade library's own first step
        "default_cascade_on_heldout": check_points(held, default, cascade.check, cascade.settings.max_steps),
        "plain_cascade_on_heldout": [replay(held, None, probability, t, 3, params_of(default)) for t in THRESHOLDS],
        "replay_on_heldout_basic_signals": check_points(held, library, basic_check, steps),
        "replay_on_heldout_without_examples": check_points(held, library, plain_check, steps),
        "oracle_on_heldout": oracle_point(held, library, steps),  # a perfect check: the most a check could give
        "default_oracle_on_heldout": oracle_point(held, default, steps),
    }
    if cascade.gate is not None:
        payload["gated_on_heldout"] = gated_on_heldout(held, library, cascade)
    if args.mix_single:
        payload["mix"] = mix_with_single(comparison, args.mix_single, library, default)
    files["vs-single"] = payload
    columns = comparison["columns"]
    for name in ("single", "routed"):
        print(f"{name:<8} quality {columns[name]['quality']:.3f}  params {columns[name]['avg_params_b']:.3f} B")
    oracle = payload["oracle_on_heldout"]["cascade"]
    print(f"perfect check quality {oracle['quality']:.3f}  params {oracle['avg_params_b']:.3f} B")
    print(f"{comparison['items']} held-out items")
    return files


if __name__ == "__main__":
    main()
