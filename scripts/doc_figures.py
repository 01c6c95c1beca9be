#!/usr/bin/env python
"""Write the docs' deterministic figures (no timings) to docs/data/, each with its provenance.

    .venv/bin/python scripts/doc_figures.py map route experts outcomes serve-runs

- ``map``: the default library's measured table, its maps at 1.0 B (the default) and 0.5 B, the front
  (``coserve map --budget 0.5``; also redraws docs/img/default-map-front.png) -> docs/data/default-map.json
- ``route``: the default router on the held-out labelled prompts (``coserve route --json`` over
  tests/data/route_labelled.jsonl): categories right, per category; and the classifier's training
  examples per category (coserve/data/categories.yaml) -> docs/data/route-heldout.json
- ``experts``: the default library's file sizes and computed loaded footprints (``coserve experts
  --json``) and each expert's f16 KV cache (n_parallel x context cells) -> docs/data/experts.json
- ``outcomes``: counts in coserve/data/default-outcomes.jsonl (items per suite, items scored 1 per
  expert and suite) -> docs/data/default-outcomes.json
- ``serve-runs``: every recorded ``coserve bench serve`` run (docs/data/serve*.json; a file with
  repeated runs gives one entry per run): req/s per policy, the ratios the targets read, each switch
  over its same-process floor, and their median and min-max over the runs -> docs/data/serve-runs.json

It reads what the commands print; it measures no time and knows nothing of how the figures are made.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coserve.bench.provenance import write_data  # noqa: E402

DATA = ROOT / "docs" / "data"
POLICIES = ("lookahead", "all_resident", "lru", "load_per_request", "peer")


def _coserve(*args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-m", "coserve.cli", *args], cwd=ROOT, input=stdin, capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"coserve {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def default_map() -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "map.json"
        _coserve("map", "--budget", "0.5", "--plot", "docs/img/default-map-front.png", "--json", str(out))
        payload = json.loads(out.read_text())
    return write_data(DATA / "default-map.json", payload, "scripts/doc_figures.py map")


def route_heldout() -> Path:
    rows = [json.loads(line) for line in (ROOT / "tests/data/route_labelled.jsonl").read_text().splitlines() if line]
    printed = _coserve("route", "--json", stdin="\n".join(r["prompt"] for r in rows) + "\n")
    decisions = [json.loads(line) for line in printed.splitlines() if line.strip()]
    if len(decisions) != len(rows):
        raise SystemExit(f"{len(rows)} prompts, {len(decisions)} decisions")
    per_category: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "right": 0})
    wrong = []
    for row, decision in zip(rows, decisions, strict=True):
        cell = per_category[row["category"]]
        cell["n"] += 1
        if decision["category"] == row["category"]:
            cell["right"] += 1
        else:
            wrong.append({"prompt": row["prompt"], "label": row["category"], "routed": decision["category"]})
    reasons = Counter(d["reason"] for d in decisions)
    import yaml

    examples = yaml.safe_load((ROOT / "coserve/data/categories.yaml").read_text())
    payload = {
        "training_examples": {c: len(v["examples"]) for c, v in examples.items()},
        "data": "tests/data/route_labelled.jsonl",
        "n": len(rows),
        "right": sum(c["right"] for c in per_category.values()),
        "per_category": dict(sorted(per_category.items())),
        "reasons": dict(reasons),
        "experts": dict(Counter(d["expert"] for d in decisions)),
        "wrong": wrong,
    }
    return write_data(DATA / "route-heldout.json", payload, "scripts/doc_figures.py route")


def experts() -> Path:
    from coserve.assets import model_path
    from coserve.backends.gguf_header import kv_cache_bytes, read_header
    from coserve.config import load_library

    listing = json.loads(_coserve("experts", "--json"))
    library = load_library()
    base = library.path.parent if library.path else None
    mib = 1024 * 1024
    for row in listing["experts"]:
        spec = library.expert(row["name"])
        cells = spec.context * int((spec.options or {}).get("n_parallel") or 2)
        row["kv_cache_cells"] = cells
        row["kv_cache_mib"] = round(kv_cache_bytes(read_header(model_path(spec, base)), cells) / mib, 1)
        row["mib"] = None if row["bytes"] is None else round(row["bytes"] / mib, 1)
        row["loaded_mib"] = None if row["loaded_bytes"] is None else round(row["loaded_bytes"] / mib, 1)
    listing["library"] = "default (coserve/data/default.yaml)"
    return write_data(DATA / "experts.json", listing, "scripts/doc_figures.py experts")


def outcomes() -> Path:
    rows = [
        json.loads(line) for line in (ROOT / "coserve/data/default-outcomes.jsonl").read_text().splitlines() if line
    ]
    suites: dict[str, dict[str, Any]] = {}
    for row in rows:
        suite = row["id"].rsplit("-", 1)[0]
        cell = suites.setdefault(suite, {"items": 0, "categories": Counter(), "scored_1": Counter(), "sum": Counter()})
        cell["items"] += 1
        cell["categories"][row["category"]] += 1
        for expert, score in row["scores"].items():
            cell["scored_1"][expert] += int(score == 1.0)
            cell["sum"][expert] += score
    payload = {
        "data": "coserve/data/default-outcomes.jsonl",
        "items": len(rows),
        "experts": sorted({e for r in rows for e in r["scores"]}),
        "suites": {
            s: {
                "items": c["items"],
                "categories": dict(c["categories"]),
                "scored_1": dict(c["scored_1"]),
                "mean": {e: round(v / c["items"], 4) for e, v in c["sum"].items()},
            }
            for s, c in sorted(suites.items())
        },
    }
    return write_data(DATA / "default-outcomes.json", payload, "scripts/doc_figures.py outcomes")


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _switch_ratios(switch: dict[str, Any]) -> dict[str, dict[str, float]]:
    """RAM -> ACTIVE time over the page-cache floor measured in the same process, per expert."""
    out: dict[str, dict[str, float]] = {}
    for mode, block in (("plain", switch), ("hugepages", switch.get("hugepages"))):
        for expert, cell in ((block or {}).get("experts") or {}).items():
            if cell.get("ram_floor_s"):
                out.setdefault(mode, {})[expert] = cell["ram_to_active_s"] / cell["ram_floor_s"]
    return out


def _ratios(rps: dict[str, float]) -> dict[str, float]:
    return {
        "lookahead_x_peer": rps["lookahead"] / rps["peer"],
        "lookahead_x_lru": rps["lookahead"] / rps["lru"],
        "lookahead_x_load_per_request": rps["lookahead"] / rps["load_per_request"],
        "lookahead_below_all_resident": (rps["all_resident"] - rps["lookahead"]) / rps["all_resident"],
        "all_resident_x_peer": rps["all_resident"] / rps["peer"],
    }


def _per_run_figures(body: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
    """Each run's (policy -> its figures, switch block), in run order; None if a policy lacks req/s.

    A single-run file has ``policies`` (policy -> figures) and one ``switch``. A multi-run file
    (``coserve bench serve`` with repeats) has ``runs`` (policy -> one figures dict per run) and a
    ``summary``; its ``switch`` is either a list with one block per run or one block for the file,
    which then goes with its first run only (so the switch is counted once per file).
    """
    per_policy = body.get("runs")
    if isinstance(per_policy, dict):
        counts = {len(per_policy[p]) if isinstance(per_policy.get(p), list) else 0 for p in POLICIES}
        if len(counts) != 1 or 0 in counts:
            return None
        count = counts.pop()
        switch = body.get("switch")
        switches = switch if isinstance(switch, list) and len(switch) == count else [switch or {}] + [{}] * (count - 1)
        runs = [({p: per_policy[p][i] for p in POLICIES}, switches[i]) for i in range(count)]
    else:
        policies = body.get("policies", {})
        if not all(isinstance(policies.get(p), dict) for p in POLICIES):
            return None
        runs = [({p: policies[p] for p in POLICIES}, body.get("switch") or {})]
    if not all(isinstance(figures[p].get("throughput_rps"), float) for figures, _ in runs for p in POLICIES):
        return None
    return runs


def serve_runs(data: Path = DATA) -> Path:
    """Every run recorded in ``data``/serve-*.json, one entry per run, and their spread."""
    runs, skipped, files = [], [], 0
    for path in sorted({*data.glob("serve-*.json"), *data.glob("serve.json")}):
        if path.name == "serve-runs.json":
            continue
        body = json.loads(path.read_text())
        per_run = _per_run_figures(body)
        if per_run is None:
            skipped.append(f"docs/data/{path.name}: no run of every policy with throughput_rps")
            continue
        files += 1
        commit = body.get("provenance", {}).get("commit", "not recorded")
        for index, (figures, switch) in enumerate(per_run, start=1):
            rps = {p: figures[p]["throughput_rps"] for p in POLICIES}
            runs.append(
                {"file": f"docs/data/{path.name}", "run": index, "runs_in_file": len(per_run), "commit": commit}
                | {"routed_in_server": bool(figures["lookahead"].get("routed")), "req_per_s": rps}
                | _ratios(rps)
                | {"switch_over_floor": _switch_ratios(switch)}
            )
    if not runs:
        raise SystemExit(f"no serve run with every policy's throughput_rps in {data}")
    keys = list(_ratios(runs[0]["req_per_s"]))
    payload = {
        "note": f"{len(runs)} runs from {files} files, on different commits, two backends and machines over the "
        "sessions: a spread of recorded runs, not repetitions of one configuration. A file with several "
        "(alternating) runs gives one entry per run; a switch measured once per file is on its run 1 only",
        "files": files,
        "runs": runs,
        "skipped": skipped,
        "over_runs": {k: _spread([r[k] for r in runs]) for k in keys}
        | {f"{p}_req_per_s": _spread([r["req_per_s"][p] for r in runs]) for p in POLICIES},
    }
    return write_data(data / "serve-runs.json", payload, "scripts/doc_figures.py serve-runs")


JOBS = {"map": default_map, "route": route_heldout, "experts": experts, "outcomes": outcomes, "serve-runs": serve_runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", nargs="*", metavar="JOB", help=f"some of: {', '.join(JOBS)} (default: all)")
    names = parser.parse_args().jobs or list(JOBS)
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}; known: {', '.join(JOBS)}")
    for name in names:
        print(JOBS[name]().relative_to(ROOT))


if __name__ == "__main__":
    main()
