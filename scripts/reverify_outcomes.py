"""Recompute the verifier signals of an outcome file's rows from their recorded answers.

    python scripts/reverify_outcomes.py --data TRAIN.jsonl --out TRAIN-reverified.jsonl --run-examples

The rows must carry ``prompt`` and ``texts`` (``coserve outcomes --with-prompts --keep-text``); see
coserve.outcomes.reverify. ``--run-examples`` runs each answer's code on the prompt's examples in the
sandbox (model code runs on this machine: docs/library.md, "Cascades").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coserve.bench.script_run import run_script
from coserve.jsonl import read_rows
from coserve.outcomes.reverify import reverify_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an outcome file written with --with-prompts --keep-text")
    parser.add_argument("--out", required=True, help="the file to write (the same rows, signals recomputed)")
    parser.add_argument("--run-examples", action="store_true", help="run the answers on the prompt's examples")
    args = parser.parse_args()
    lines = []
    for number, row in read_rows(Path(args.data)):
        if isinstance(row, str):
            raise SystemExit(f"{args.data}:{number}: {row}")
        lines.append(json.dumps(reverify_row(row, args.run_examples)))
    Path(args.out).write_text("".join(line + "\n" for line in lines))
    print(f"{len(lines)} rows -> {args.out}")


if __name__ == "__main__":
    run_script(main)
