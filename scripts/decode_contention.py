#!/usr/bin/env python3
"""Decode speed of llamacpp-split experts under llama.cpp's OpenMP wait settings, while other processes
hold the cores (or not): what a busy core does to a server whose runtime waits by spinning.

    .venv/bin/python scripts/decode_contention.py --json docs/data/decode-contention-s17.json

For each repeat, expert and setting (alternating), a fresh process loads the expert (its default
threads, 4 of the serve workload's prompts in flight, greedy, 24 tokens each, again and again) and
counts the tokens streamed in a window after a warm-up; it also measures the CPU that every other
process on the machine used in that window (in cores), so a figure says how busy the machine was.
Settings: ``default`` (coserve's own: coserve.backends.llama_capi), ``spin=N`` (``GOMP_SPINCOUNT=N``),
``passive``/``active`` (``OMP_WAIT_POLICY``); ``spin=300000`` is libgomp's own default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from coserve.bench.script_run import run_script
from coserve.bench.spread import spread_table
from coserve.cli.common import at_least
from coserve.errors import ConfigError

SETTINGS_HELP = "comma-separated: default, passive, active, spin=N"
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def setting_env(setting: str) -> dict[str, str]:
    """The environment of a worker for one setting (the wait variables replaced or removed)."""
    env = {k: v for k, v in os.environ.items() if k not in _WAIT_VARS}
    if setting == "default":
        return env
    if setting in ("passive", "active"):
        env["OMP_WAIT_POLICY"] = setting.upper()
        return env
    if setting.startswith("spin=") and setting[5:].isdigit():
        env["GOMP_SPINCOUNT"] = setting[5:]
        return env
    raise ConfigError(f"--settings: unknown setting {setting!r} ({SETTINGS_HELP})")


def _busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _own_ticks() -> int:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, every thread of this process


def worker(expert: str, seconds: float) -> dict[str, float]:
    """Tokens per second of ``expert`` (4 requests in flight) and the other processes' CPU, in cores."""
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend
    from coserve.bench.workload import make_workload
    from coserve.config import load_library
    from coserve.types import Message, Sampling

    library = load_library()
    spec = library.expert(expert)
    prompts = [w["prompt"] for w in make_workload(library, 400, 2.0, 0, allow_repeats=True) if w["expert"] == expert]
    backend = LlamaCppSplitBackend()
    handle = backend.load(spec, backend.stage(spec, library.path.parent if library.path else None))
    stamps: list[float] = []
    stop = threading.Event()

    def stamp(_chunk: object) -> bool:
        stamps.append(time.monotonic())
        return False  # keep listening

    def client(k: int) -> None:
        for n in range(100_000):  # bounded; ends at ``stop``
            if stop.is_set():
                return
            messages = (Message("user", prompts[(4 * n + k) % len(prompts)]),)
            backend.stream(handle, messages, Sampling(max_tokens=24, temperature=0.0), stamp)

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(2.0)  # warm-up: contexts filled, threads started
    hz = os.sysconf("SC_CLK_TCK")
    start, busy0, own0 = time.monotonic(), _busy_ticks(), _own_ticks()
    time.sleep(seconds)
    end, busy1, own1 = time.monotonic(), _busy_ticks(), _own_ticks()
    stop.set()
    for thread in clients:
        thread.join()
    backend.unload(handle)
    window = end - start
    return {"tokens_per_s": sum(start <= s < end for s in stamps) / window,
            "others_cores": max(0.0, (busy1 - busy0) - (own1 - own0)) / hz / window}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default="general,large")
    parser.add_argument("--settings", default="spin=300000,default,passive", help=SETTINGS_HELP)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per run")
    parser.add_argument("--json", help="also write the figures (with provenance) to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement: EXPERT
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seconds)))
        return 0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    envs = {s: setting_env(s) for s in settings}  # every setting checked before the first run
    experts = [e.strip() for e in args.experts.split(",") if e.strip()]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {e: {s: [] for s in settings} for e in experts}
    for repeat in range(args.repeats):
        for expert in experts:
            for setting in settings:
                cmd = [sys.executable, __file__, "--worker", expert, "--seconds", str(args.seconds)]
                done = subprocess.run(cmd, env=envs[setting], capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    raise ConfigError(f"{expert} {setting}: the worker failed: {done.stderr.strip()[-400:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                runs[expert][setting].append(row)
                print(f"run {repeat + 1} {expert:<8} {setting:<12} {row['tokens_per_s']:7.1f} tok/s, "
                      f"other processes {row['others_cores']:.2f} cores", flush=True)  # fmt: skip
    summary = spread_table(runs, ("tokens_per_s", "others_cores"))
    for expert, by in summary.items():
        for setting, row in by.items():
            t, o = row["tokens_per_s"], row["others_cores"]
            print(f"{expert:<8} {setting:<12} {t['median']:7.1f} tok/s ({t['min']:.1f}-{t['max']:.1f}), "
                  f"other processes {o['median']:.2f} cores")  # fmt: skip
    if args.json:
        from coserve.bench.provenance import write_data

        result = {"experts": experts, "settings": settings, "repeats": args.repeats, "seconds": args.seconds,
                  "summary": summary, "runs": runs}  # fmt: skip
        write_data(Path(args.json), result, " ".join(["scripts/decode_contention.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    run_script(main)
