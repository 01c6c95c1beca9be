"""Write the default library in cascade mode: a cheaper first step, then the answer check escalates.

    python scripts/cascade_library.py --check CHECK.json --budget 0.4 --threshold 0.5 --out /tmp/cascade.yaml

The experts, categories and measured outcomes are the default library's (its files named by
absolute path); the map is solved at ``--budget`` (average active parameters of the first step),
the low-confidence fallback goes to ``--fallback`` (the check escalates from there), and
``routing.mode: cascade`` asks ``--check``. Used to measure cascade against single-choice routing
(docs/outcomes.md, "Cascade vs single choice").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parent.parent / "coserve" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", required=True, help="the answer check (coserve train-check)")
    parser.add_argument("--out", required=True, help="the library file to write")
    parser.add_argument("--budget", type=float, default=0.4, help="average active parameters of the first step (B)")
    parser.add_argument("--fallback", default="coder", help="the first step of low-confidence prompts")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(good) at or above this: accepted")
    parser.add_argument("--max-steps", type=int, default=3)
    args = parser.parse_args()
    library = yaml.safe_load((DATA / "default.yaml").read_text())
    library["categories"] = str(DATA / library["categories"])
    router = library["router"]
    router["outcomes"] = str(DATA / router["outcomes"])
    router["budget"] = {"avg_params_b": args.budget}
    router["fallback"]["expert"] = args.fallback
    library["routing"] = {
        "mode": "cascade",
        "cascade": {"check": str(Path(args.check).resolve()), "threshold": args.threshold, "max_steps": args.max_steps},
    }
    Path(args.out).write_text(yaml.safe_dump(library, sort_keys=False))
    print(f"cascade library -> {args.out}")


if __name__ == "__main__":
    main()
