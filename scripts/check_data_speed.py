"""Wall time of ``coserve check-data`` on a generated 30,000-row outcome file (no shared data).

Writes a file of 30,000 rows (4 categories, 3 experts, 100 bad rows among them), runs the command
in a fresh process ``--runs`` times and records each wall time, median, min and max.

    OPENBLAS_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/check_data_speed.py \
        --json docs/data/check-data-30k.json --runs 5
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coserve.bench.provenance import write_data

ROWS = 30_000
BAD_EVERY = 300  # one row in 300 lacks an expert's score: 100 bad rows


def write_file(path: Path) -> None:
    with path.open("w") as handle:
        for i in range(ROWS):
            scores = {"small": (i % 7) / 6, "mid": (i % 5) / 4, "big": (i % 3) / 2}
            if i % BAD_EVERY == 0:
                del scores["big"]
            row = {"id": f"q{i}", "prompt": f"prompt number {i}", "category": f"cat{i % 4}", "scores": scores}
            handle.write(json.dumps(row) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "outcomes.jsonl"
        write_file(data)
        command = [sys.executable, "-m", "coserve.cli", "check-data", str(data), "--json", str(Path(folder) / "c.json")]
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            rc = subprocess.run(command, capture_output=True, text=True).returncode
            times.append(round(time.perf_counter() - started, 3))
            if rc != 2:  # the bad rows make the file refused
                raise SystemExit(f"check-data exited {rc}, not 2")
        summary = json.loads((Path(folder) / "c.json").read_text())["files"][0]
    payload = {
        "rows": ROWS,
        "bad_rows": len(summary["bad_rows"]),
        "usable_rows": summary["usable_rows"],
        "wall_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "note": "wall time of a fresh process (Python start and imports included); the machine was shared",
    }
    write_data(args.json, payload, "python scripts/check_data_speed.py " + shlex.join(argv))
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
