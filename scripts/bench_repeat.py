#!/usr/bin/env python
"""Run one benchmark command several times and write the median and min-max of each of its figures.

    .venv/bin/python scripts/bench_repeat.py --runs 3 --json docs/data/OUT.json -- coserve bench route

The command is run ``--runs`` times, one after another, each with ``--json <a temporary file>``
appended (so it must take ``--json``, as every ``coserve bench`` command and the scripts do); every
numeric figure its file holds (any depth, ``provenance`` left out) is gathered over the runs. The
output holds each run's figures and, per figure, ``median``, ``min`` and ``max``, with the provenance
of this command. A run that fails stops the whole (nothing is written). It measures nothing itself
and knows nothing of what the figures mean; the machine should be quiet while it runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.cli.common import at_least


def figures(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON value, keyed by its path (``a.b.0.c``); booleans and provenance left out."""
    found: dict[str, float] = {}
    if isinstance(value, bool):
        return found
    if isinstance(value, int | float):
        return {prefix: float(value)}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        if prefix == "" and key == "provenance":
            continue
        found.update(figures(inner, f"{prefix}.{key}" if prefix else str(key)))
    return found


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, min and max of each figure every run holds (a figure missing from a run is left out)."""
    shared = [key for key in runs[0] if all(key in run for run in runs)]
    return {
        key: {
            "median": statistics.median(run[key] for run in runs),
            "min": min(run[key] for run in runs),
            "max": max(run[key] for run in runs),
        }
        for key in shared
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=at_least(1), default=3, help="how many runs (default 3)")
    parser.add_argument("--json", required=True, help="where to write the runs and their summary")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = [part for part in args.command if part != "--"] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to repeat after --")
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        parser.error(f"{command[0]!r} is not a command here")
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.runs):
            out = Path(folder) / f"run{index}.json"
            done = subprocess.run([*command, "--json", str(out)], check=False)
            if done.returncode != 0 or not out.exists():
                print(f"bench_repeat: error: run {index + 1} failed (exit {done.returncode})", file=sys.stderr)
                return 1
            runs.append(figures(json.loads(out.read_text())))
    payload = {"runs": args.runs, "command_repeated": " ".join(command), "summary": summarise(runs), "each_run": runs}
    write_data(
        Path(args.json),
        payload,
        [".venv/bin/python", "scripts/bench_repeat.py", *(sys.argv[1:] if argv is None else argv)],
    )
    print(json.dumps(payload["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
