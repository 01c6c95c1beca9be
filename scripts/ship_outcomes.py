"""Trim a `coserve outcomes` file to what a library may ship: id, category and scores per row.

    python scripts/ship_outcomes.py RUN.jsonl coserve/data/default-outcomes.jsonl

No prompt text, no latencies or token counts (they describe the machine, not the experts); rows
sorted by id so the file diffs cleanly. Items read back from the suites' packages by id.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from coserve.bench.script_run import run_script


def _key(row: dict) -> tuple[str, int]:
    suite, _, index = row["id"].rpartition("-")
    return suite, int(index) if re.fullmatch(r"\d+", index) else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `coserve outcomes` file")
    parser.add_argument("target", type=Path, help="the trimmed file to write")
    args = parser.parse_args()
    source, target = args.run, args.target
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [{"id": r["id"], "category": r["category"], "scores": r["scores"]} for r in rows if r.get("scores")]
    kept.sort(key=_key)
    target.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept), encoding="utf-8")
    print(f"{len(kept)} of {len(rows)} rows -> {target}")


if __name__ == "__main__":
    run_script(main)
