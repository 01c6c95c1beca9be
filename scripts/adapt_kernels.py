"""Which stages of ``coserve bench adapt`` depend on the CPU's BLAS kernel, and by how much (session 14).

Runs the 15 B official replay's stages (the llmrouter file split in halves, as the benchmark does) in one
child process per setting, each under its own ``OPENBLAS_CORETYPE`` (OpenBLAS reads it once, at load: one
machine acts as another) and ``NPY_DISABLE_CPU_FEATURES`` (numpy's own SIMD paths), without the pin that
the command line sets (``coserve.bench.kernel``). Each child writes per stage:

* the embedders on the file's first 128 prompts, embedded afresh (``minilm``, ``minilm-static+features``);
* from the same cached vectors for every child (the pinned kernel's cache, so only the fits differ): the
  classifier's category for each stream item, the offline table, the stack predictor's predictions of the
  stream and its cross-fitted predictions of the prior (the calibration's);
* the replay's figures.

The parent compares the children two by two: elements that differ and the largest difference.

    python scripts/adapt_kernels.py --data ../shared/data/llmrouter --json docs/data/adapt-kernels-s14.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETTINGS = {  # name: (OPENBLAS_CORETYPE, NPY_DISABLE_CPU_FEATURES)
    "SkylakeX (this CPU's own)": ("SkylakeX", ""),
    "Haswell": ("Haswell", ""),
    "Haswell, numpy without AVX-512": ("Haswell", "X86_V4 AVX512_ICL"),
}
SAMPLE = 128  # prompts embedded afresh per child
FIGURES = ("tracking_error_max", "recovery_requests", "change_alarms")


def _child(data: Path, out: Path) -> None:
    import json

    import numpy as np

    from coserve.bench.adapt import CALIBRATION_FOLDS, AdaptOptions, replay_adapt
    from coserve.bench.adapt_fit import fit_stream, split_by_prompt
    from coserve.bench.kernel import PINNED_KERNEL, blas_kernels
    from coserve.eval.data import embed_cached, load_costs, load_outcomes
    from coserve.paths import cache_dir
    from coserve.router.embedders import STACK_EMBEDDER, make_embedder

    outcomes, _ = load_outcomes(data / "train.jsonl", on_bad="skip")
    costs = load_costs(data / "experts.json")
    embedder, predictor = make_embedder("minilm"), make_embedder(STACK_EMBEDDER)
    sample = list(outcomes.prompts[:SAMPLE])
    arrays: dict[str, np.ndarray] = {
        "embedding minilm": np.asarray(embedder.encode(sample), dtype=np.float32),
        "embedding minilm-static+features": np.asarray(predictor.encode(sample), dtype=np.float32),
    }
    cache = cache_dir() / f"blas-{PINNED_KERNEL.lower()}"  # the same vectors for every child
    X, P = embed_cached(outcomes.prompts, embedder, cache), embed_cached(outcomes.prompts, predictor, cache)
    fit_rows, stream_rows = split_by_prompt(outcomes)
    prior, stream = outcomes.subset(fit_rows), outcomes.subset(stream_rows)
    options = AdaptOptions(budget_axis="params", target=15.0)
    folds = CALIBRATION_FOLDS if options.online().calibrates else 0
    pair = (P[fit_rows], P[stream_rows])
    f = fit_stream(prior, X[fit_rows], stream, X[stream_rows], costs, "params", pair, folds)
    arrays |= {"stream category": f.stream_category, "offline table": f.offline, "stream predictions": f.predicted}
    if f.prior_fit is not None:
        arrays["prior cross-fit predictions"] = f.prior_fit.predicted
    named: dict[str, Any] = {name.replace(" ", "_"): a for name, a in arrays.items()}
    np.savez(out.with_suffix(".npz"), **named)
    report = replay_adapt(f.offline, stream, f.stream_category, costs, options, f.predicted, f.vectors, f.prior_fit)
    figures = {"quality": report["quality"], **{k: report[k] for k in FIGURES}, "blas": blas_kernels()}
    out.with_suffix(".json").write_text(json.dumps({"names": list(arrays), "figures": figures}))


def _compare(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    stages = {}
    for name, a in first["arrays"].items():
        b = other["arrays"][name]
        both = np.isfinite(a) & np.isfinite(b)
        gap = np.abs(a.astype(np.float64) - b.astype(np.float64))[both]
        differ = int(np.sum((a != b) & both) + np.sum(np.isfinite(a) != np.isfinite(b)))
        stages[name] = {"elements": int(a.size), "differ": differ, "max_abs_difference": float(gap.max(initial=0.0))}
    return {"stages": stages, "figures_equal": first["figures"]["quality"] == other["figures"]["quality"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the llmrouter folder (train.jsonl, experts.json)")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.data, args.child)
        return 0
    import json

    import numpy as np

    from coserve.bench.provenance import write_data

    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (coretype, disabled)) in enumerate(SETTINGS.items()):
            env = {**os.environ, "OPENBLAS_CORETYPE": coretype, "NPY_DISABLE_CPU_FEATURES": disabled}
            out = Path(tmp) / f"run{i}"
            command = [sys.executable, __file__, "--data", str(args.data), "--child", str(out)]
            subprocess.run(command, env=env, check=True, timeout=3600)
            meta = json.loads(out.with_suffix(".json").read_text())
            saved = np.load(out.with_suffix(".npz"))
            arrays = {n: saved[n.replace(" ", "_")] for n in meta["names"]}
            runs[name] = {"arrays": arrays, "figures": meta["figures"]}
            print(name, meta["figures"]["quality"], flush=True)
    names = list(runs)
    payload = {
        "settings": {
            name: {"OPENBLAS_CORETYPE": c, "NPY_DISABLE_CPU_FEATURES": d} for name, (c, d) in SETTINGS.items()
        },
        "figures": {name: run["figures"] for name, run in runs.items()},
        "pairs": {f"{a} vs {b}": _compare(runs[a], runs[b]) for i, a in enumerate(names) for b in names[i + 1 :]},
        "sample_prompts": SAMPLE,
    }
    print(json.dumps(payload["pairs"], indent=1))
    if args.json:
        write_data(args.json, payload, ["python", *sys.argv])
    return 0


if __name__ == "__main__":
    sys.exit(main())
