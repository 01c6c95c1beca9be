"""Trim a `coserve outcomes` file to what a library may ship: id, category and scores per row.

    python scripts/ship_outcomes.py RUN.jsonl coserve/data/default-outcomes.jsonl

No prompt text, no latencies or token counts (they describe the machine, not the experts); rows
sorted by id so the file diffs cleanly. Items read back from the suites' packages by id.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _key(row: dict) -> tuple[str, int]:
    suite, _, index = row["id"].rpartition("-")
    return suite, int(index) if re.fullmatch(r"\d+", index) else -1


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [{"id": r["id"], "category": r["category"], "scores": r["scores"]} for r in rows if r.get("scores")]
    kept.sort(key=_key)
    target.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept), encoding="utf-8")
    print(f"{len(kept)} of {len(rows)} rows -> {target}")


if __name__ == "__main__":
    main()
