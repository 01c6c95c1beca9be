#!/usr/bin/env python3
"""How fast ``scripts/setup`` distils the static router table, on a quiet machine and beside a process
that holds one core: coserve's BLAS threads chosen per batch from the free cores, against every usable core.

    .venv/bin/python scripts/distil_contention.py --json docs/data/distil-contention-s18.json

For each repeat, condition and setting (alternating), a fresh process distils the first ``--pieces``
word pieces of MiniLM's vocabulary (``coserve.router.embed_static.distil_table``) and reports pieces per
second and the whole table's time at that rate (30,522 pieces). Conditions: ``quiet``, and ``busy``: a
``yes`` pinned to the last CPU of this process's mask for the whole run. Settings: ``spare`` (coserve's
own: threads from ``coserve.cpus.SpareCores``), ``all`` (every usable core, as OpenBLAS does by itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from coserve.bench.script_run import run_script
from coserve.bench.spread import spread_table
from coserve.cli.common import at_least

SETTINGS = ("spare", "all")
CONDITIONS = ("quiet", "busy")


def worker(setting: str, pieces: int) -> dict[str, float]:
    """Pieces per second distilling ``pieces`` word pieces under ``setting``."""
    import numpy as np

    from coserve.router.embed import MiniLMEmbedder, minilm_files
    from coserve.router.embed_static import distil_table

    model = MiniLMEmbedder(minilm_files(), cache_size=0)
    ids = np.arange(model.tokenizer.get_vocab_size())[:pieces]
    start = time.perf_counter()  # the spare setting's first look (0.5 s) is inside the time
    distil_table(model, ids, spare=None if setting == "spare" else (lambda: None))
    seconds = time.perf_counter() - start
    vocab = model.tokenizer.get_vocab_size()
    return {"pieces_per_s": len(ids) / seconds, "seconds": seconds, "table_s": vocab * seconds / len(ids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=at_least(1), default=10_240, help="word pieces per run (5 batches)")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--json", help="also write the figures (with provenance) to this file")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.pieces)))
        return 0
    runs: dict[str, dict[str, list[dict[str, float]]]] = {c: {s: [] for s in SETTINGS} for c in CONDITIONS}
    last_cpu = str(sorted(os.sched_getaffinity(0))[-1])
    for repeat in range(args.repeats):
        for condition in CONDITIONS:
            burner = None
            if condition == "busy":
                burner = subprocess.Popen(["taskset", "-c", last_cpu, "sh", "-c", "exec yes > /dev/null"])
                time.sleep(1.0)
            try:
                for setting in SETTINGS:
                    cmd = [sys.executable, __file__, "--worker", setting, "--pieces", str(args.pieces)]
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=True)
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    runs[condition][setting].append(row)
                    print(f"run {repeat + 1} {condition:<5} {setting:<5} {row['pieces_per_s']:6.0f} pieces/s, "
                          f"table {row['table_s']:5.0f} s", flush=True)  # fmt: skip
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
    summary = spread_table(runs, ("pieces_per_s", "table_s"))
    for condition, by in summary.items():
        for setting, row in by.items():
            rate, table = row["pieces_per_s"], row["table_s"]
            print(f"{condition:<5} {setting:<5} {rate['median']:6.0f} pieces/s ({rate['min']:.0f}-{rate['max']:.0f}), "
                  f"whole table {table['median']:.0f} s ({table['min']:.0f}-{table['max']:.0f})")  # fmt: skip
    if args.json:
        from coserve.bench.provenance import write_data

        result = {"pieces": args.pieces, "repeats": args.repeats, "summary": summary, "runs": runs}
        write_data(Path(args.json), result, " ".join(["scripts/distil_contention.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    run_script(main)
