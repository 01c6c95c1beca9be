"""Write the default library in cascade mode: a cheaper first step, then the answer check escalates.

    python scripts/cascade_library.py --check CHECK.json --budget 0.4 --threshold 0.5 --out /tmp/cascade.yaml
    python scripts/cascade_library.py --check CHECK.json --plan TRAIN.jsonl [--plan ...] --threshold 0.5 \\
        --run-examples --plan-out docs/data/NAME-plan.json [--start-gate GATE.json] --out /tmp/cascade.yaml

The experts, categories and measured outcomes are the default library's (its files named by
absolute path). Without ``--plan``: the map is solved at ``--budget`` (average active parameters
of the first step), the low-confidence fallback goes to ``--fallback`` (the check escalates from
there), and every category cascades. With ``--plan`` (the check's own training rows, never held-out
ones): the default map and fallback stay as shipped (single choice), and the cascade runs only in
the categories where, replayed on those rows with the check's out-of-fold probabilities, a start
cheaper than single choice's expert is at least as good at fewer parameters
(coserve.eval.cascade_plan; ``routing.cascade.categories``). ``routing.mode: cascade`` asks
``--check``; ``--start-gate`` adds the start gate (coserve train-check --gate). Used to measure
cascade against single-choice routing (docs/outcomes.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parent.parent / "coserve" / "data"


def plan(args: argparse.Namespace, library_file: Path) -> dict[str, Any]:
    """The per-category starts from the check's training rows (out-of-fold probabilities)."""
    from coserve.bench.provenance import write_data
    from coserve.config import load_library
    from coserve.eval.cascade import answers, cross_validate, read_signal_rows
    from coserve.eval.cascade_plan import plan_starts
    from coserve.router.check import load_check
    from coserve.router.measured import with_measured_map

    library = with_measured_map(load_library(library_file))
    check = load_check(args.check)
    rows = read_signal_rows(args.plan)
    data = answers(rows)
    experts = sorted({a.expert for a in data})
    oof, figures = cross_validate(data, experts, good=check.good, features=check.signal_names)
    probability = {(a.item, a.expert): float(p) for a, p in zip(data, oof, strict=True)}
    result = plan_starts(rows, library, probability, args.threshold, args.max_steps, args.min_skill)
    if args.plan_out:
        payload = {"data": args.plan, "cv": figures, **result}
        write_data(Path(args.plan_out), payload, [Path(sys.argv[0]).name, *sys.argv[1:]])
    for category, entry in result["categories"].items():
        print(f"{category:<10} {entry['items']:>3} items: start {entry['start'] or '(single choice)'}")
    return dict(result["starts"])


def write_checked(library: dict[str, Any], out: Path) -> None:
    """Write ``library`` to ``out`` and read it back as the server would at start (every setting, the
    check file, the start gate); where the server would refuse it, remove it and exit 2 with the reason."""
    from coserve.config import load_library
    from coserve.engine.cascade import Cascade
    from coserve.errors import ConfigError

    out.write_text(yaml.safe_dump(library, sort_keys=False))
    try:
        Cascade.from_library(load_library(out))
    except ConfigError as exc:
        out.unlink()
        print(f"cascade_library: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", required=True, help="the answer check (coserve train-check)")
    parser.add_argument("--out", required=True, help="the library file to write")
    parser.add_argument("--budget", type=float, default=0.4, help="average active parameters of the first step (B)")
    parser.add_argument("--fallback", default="coder", help="the first step of low-confidence prompts")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(good) at or above this: accepted")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--run-examples", action="store_true", help="routing.cascade.run_examples: true")
    parser.add_argument("--plan", action="append", help="the check's training rows: decide where the cascade runs")
    parser.add_argument("--plan-out", help="with --plan: write the decision's figures here (provenance)")
    parser.add_argument("--min-skill", type=float, default=0.2, help="with --plan: a start's least mean score")
    parser.add_argument("--start-gate", help="routing.cascade.start_gate: a gate file (coserve train-check --gate)")
    parser.add_argument("--start-gate-threshold", type=float, help="routing.cascade.start_gate_threshold")
    args = parser.parse_args()
    library = yaml.safe_load((DATA / "default.yaml").read_text())
    library["categories"] = str(DATA / library["categories"])
    router = library["router"]
    router["outcomes"] = str(DATA / router["outcomes"])
    cascade: dict[str, Any] = {
        "check": str(Path(args.check).resolve()),
        "threshold": args.threshold,
        "max_steps": args.max_steps,
    }
    if args.run_examples:
        cascade["run_examples"] = True
    if args.start_gate:
        cascade["start_gate"] = str(Path(args.start_gate).resolve())
    if args.start_gate_threshold is not None:
        cascade["start_gate_threshold"] = args.start_gate_threshold
    if not args.plan:
        router["budget"] = {"avg_params_b": args.budget}
        router["fallback"]["expert"] = args.fallback
    library["routing"] = {"mode": "cascade", "cascade": cascade}
    write_checked(library, Path(args.out))
    if args.plan:
        try:  # the plan reads the library just written; a plan that fails leaves no library without it
            cascade["categories"] = plan(args, Path(args.out))
        except BaseException:
            Path(args.out).unlink(missing_ok=True)
            raise
        write_checked(library, Path(args.out))
    print(f"cascade library -> {args.out}")


if __name__ == "__main__":
    from coserve.bench.script_run import run_script

    run_script(main)
