"""``coserve bench serve``: the serving engine against simpler residencies and a real peer.

One workload (``coserve.bench.workload``: prompts of its own, Poisson arrivals, categories drawn
from a fixed mix) is decided once by the router, then replayed against every contender:

* ``load_per_request``: arrival order, each request loads its expert and unloads it after;
* ``lru``: arrival order, experts kept within the memory budget, least recently used evicted;
* ``lookahead``: coserve's scheduler (turns by expert, bounded wait), lookahead eviction, prefetch;
* ``all_resident``: lookahead with unlimited memory (the bound: no loads after warm-up);
* ``peer``: llama-cpp-python's OpenAI-compatible server in multi-model mode (its config lists the
  same GGUF files; it loads the model a request names and drops the previous one).

Every contender runs ``repeats`` times, alternating (ABCABC...), each run a fresh server process
(``coserve.bench.contenders``); each figure is reported as median and min-max, and the targets
(docs/serving.md) are read against the medians. Generated tokens are recorded for every request
on both sides; runs whose totals differ are flagged. The ACTIVE budget holds about half the
library (loaded footprints, KV caches included); the RAM tier holds all of it. The switch is
measured directly against an honest floor (``coserve.bench.switch``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from coserve.backends.registry import get_backend
from coserve.bench.contenders import PEER_COMMAND, bench_library, run_coserve, run_peer
from coserve.bench.serve_options import CONTENDERS, checked_contenders
from coserve.bench.spread import spread
from coserve.bench.switch import hugepages_on, measure_switch, measure_switch_hugepages, print_switch
from coserve.bench.workload import make_workload
from coserve.config import LibraryConfig

__all__ = ["CONTENDERS", "bench_serve", "run", "summarise_runs", "targets"]

FIGURES = ("throughput_rps", "p50_s", "p95_s", "ttft_p50_s", "switches", "loads", "bytes_moved", "completion_tokens")
NOTE = "timings measured on the machine named in provenance; a shared machine makes them noisy"


def summarise_runs(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median and min-max of every figure per contender; the generated-token totals compared."""
    summary: dict[str, Any] = {}
    for contender, rows in runs.items():
        done = [r for r in rows if "skipped" not in r]
        if not done:
            summary[contender] = {"skipped": rows[0]["skipped"]} if rows else {"skipped": "not run"}
            continue
        summary[contender] = {f: spread([float(r[f]) for r in done]) for f in FIGURES if all(f in r for r in done)}
    totals = {c: sorted({int(r["completion_tokens"]) for r in rows if "skipped" not in r}) for c, rows in runs.items()}
    distinct = sorted({t for values in totals.values() for t in values})
    summary["completion_tokens_equal"] = len(distinct) <= 1
    if len(distinct) > 1:
        summary["completion_tokens_unequal"] = {c: t for c, t in totals.items() if t}
    return summary


def targets(summary: dict[str, Any], switch: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The serving targets (docs/serving.md), read against the medians: ratio, wanted, met or not."""
    rows: dict[str, dict[str, Any]] = {}

    def rps(contender: str) -> float | None:
        row = summary.get(contender, {})
        return row["throughput_rps"]["median"] if "throughput_rps" in row else None

    ours = rps("lookahead")
    for name, other, want in (("x_lru", "lru", 1.05), ("x_load_per_request", "load_per_request", 2.0),
                              ("x_peer", "peer", 2.0)):  # fmt: skip
        theirs = rps(other)
        if ours and theirs:
            rows[name] = {"value": ours / theirs, "want": f">= {want}", "met": ours / theirs >= want}
    bound = rps("all_resident")
    if ours and bound:
        below = 1 - ours / bound
        rows["below_all_resident"] = {"value": below, "want": "<= 0.10", "met": below <= 0.10}
    switch = switch or {}
    for name, row in (("switch_over_floor", switch), ("switch_over_floor_hugepages", switch.get("hugepages"))):
        if row and row.get("floor_s"):
            ratio = row["time_s"] / row["floor_s"]
            rows[name] = {"value": ratio, "want": "<= 1.5", "met": ratio <= 1.5}
    return rows


def _active_budget(library: LibraryConfig) -> tuple[int, int, int]:
    """(ACTIVE budget, weights, loaded footprints) in bytes: about half the library loaded; when one
    expert is most of it, the largest and the smallest together (never all of them)."""
    base = library.path.parent if library.path else None
    weights = sum(get_backend(spec.backend).nbytes(spec, base) for spec in library.experts)  # what RAM counts
    sizes = sorted(get_backend(spec.backend).footprint(spec, base) for spec in library.experts)
    return max(int(sum(sizes) * 0.5), int((sizes[-1] + sizes[0]) * 1.02)), weights, sum(sizes)


def bench_serve(
    library: LibraryConfig,
    n: int = 48,
    rate: float = 2.0,
    max_tokens: int = 24,
    seed: int = 0,
    contenders: tuple[str, ...] = CONTENDERS,
    repeats: int = 3,
    allow_repeats: bool = False,
    measure_switches: bool = True,
    peer_command: tuple[str, ...] = PEER_COMMAND,
) -> dict[str, Any]:
    """Run the workload ``repeats`` times per contender, alternating; print and return the figures."""
    active, weights, total = _active_budget(library)
    workload = make_workload(library, n, rate, seed, allow_repeats)
    counts = {e: sum(w["expert"] == e for w in workload) for e in library.expert_names}
    print(f"workload: {n} requests ({len({w['prompt'] for w in workload})} distinct prompts), Poisson {rate}/s, "
          f"{max_tokens} tokens at most each, experts {counts}; {repeats} alternating runs per contender")  # fmt: skip
    print(f"memory: library {weights / 2**20:.0f} MiB of weights, {total / 2**20:.0f} MiB loaded; "
          f"ACTIVE budget {active / 2**20:.0f} MiB, RAM holds all")  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        half = bench_library(library, folder, active, 2 * weights)
        (folder / "all").mkdir()
        everything = bench_library(library, folder / "all", 4 * total, 4 * total)
        for repetition in range(repeats):
            for contender in contenders:
                if contender == "peer":
                    row = run_peer(library, workload, max_tokens, folder, peer_command)
                elif contender == "all_resident":
                    row = run_coserve(everything, "lookahead", workload, max_tokens)
                else:
                    row = run_coserve(half, contender, workload, max_tokens)
                runs[contender].append(row)
                if "skipped" in row:
                    print(f"run {repetition + 1} {contender:<18} skipped: {row['skipped']}", flush=True)
                    continue
                print(f"run {repetition + 1} {contender:<18} {row['throughput_rps']:.3f} req/s, "
                      f"p50 {row['p50_s']:.2f} s, {row['switches']} switches, {row['completion_tokens']} tokens",
                      flush=True)  # fmt: skip
    summary = summarise_runs(runs)
    print(f"{'contender':<18} {'req/s median (min-max)':>26} {'p50 s':>7} {'switches':>9} {'tokens':>7}")
    for contender in contenders:
        row = summary[contender]
        if "skipped" in row:
            continue
        r = row["throughput_rps"]
        print(f"{contender:<18} {r['median']:>8.3f} ({r['min']:.3f}-{r['max']:.3f}) {row['p50_s']['median']:>7.2f} "
              f"{row['switches']['median']:>9.0f} {row['completion_tokens']['median']:>7.0f}")  # fmt: skip
    if not summary["completion_tokens_equal"]:
        print(f"FLAG: generated token totals differ between runs: {summary['completion_tokens_unequal']}")
    result: dict[str, Any] = {
        "note": NOTE,
        "workload": {"n": n, "rate": rate, "max_tokens": max_tokens, "seed": seed, "repeats": repeats,
                     "allow_repeats": allow_repeats, "experts": counts, "active_budget_bytes": active},
        "summary": summary,
        "runs": runs,
    }  # fmt: skip
    if measure_switches:
        result["switch"] = _switch(library)
    result["targets"] = targets(summary, result.get("switch"))
    for name, row in result["targets"].items():
        print(f"target {name:<28} {row['value']:.2f} (want {row['want']}, median): {'met' if row['met'] else 'MISSED'}")
    return result


def _switch(library: LibraryConfig) -> dict[str, Any]:
    """The switch of the largest expert (and every expert's), with and without huge pages."""
    switch = measure_switch(library)
    name = max(switch, key=lambda k: switch[k]["bytes"])
    out: dict[str, Any] = {"expert": name, "time_s": switch[name]["ram_to_active_s"],
                           "floor_s": switch[name]["ram_floor_s"], "floor": switch[name]["ram_floor"],
                           "experts": switch, "malloc_hugepages": hugepages_on()}  # fmt: skip
    print_switch(switch)
    huge = measure_switch_hugepages(library)
    if huge is not None:
        out["hugepages"] = {"time_s": huge[name]["ram_to_active_s"], "floor_s": huge[name]["ram_floor_s"],
                            "experts": huge}  # fmt: skip
        print_switch(huge, " (malloc huge pages)")
    return out


def run(library: LibraryConfig, args: argparse.Namespace) -> int:
    """``coserve bench serve`` with parsed arguments; the JSON written with its provenance."""
    from coserve.bench.provenance import write_data
    from coserve.server.protocol import MAX_TOKENS_CAP

    contenders = checked_contenders(args, MAX_TOKENS_CAP)
    result = bench_serve(library, n=args.n, rate=args.rate, max_tokens=args.max_tokens, seed=args.seed,
                         contenders=contenders, repeats=args.repeats, allow_repeats=args.allow_repeats,
                         measure_switches=not args.no_switch)  # fmt: skip
    if args.json:
        write_data(Path(args.json), result, args.command_line)
    return 0
