#!/usr/bin/env python
"""Host memory a prompt counter holds (the early 413's tokenizer, kept outside the memory budgets),
per expert of the default library, measured in fresh processes.

    PYTHONPATH=. .venv/bin/python scripts/tokenizer_memory.py [--runs 3]

For each expert and run, a fresh process imports the runtime, builds the expert's counter the way the
engine does (``Backend.prompt_counter``: llamacpp-split's vocabulary-only llama.cpp model; with
``--transformers``, also the transformers backend's Hugging Face tokenizer read from the same GGUF
file, which needs ``coserve[torch]``), counts one prompt, and reports the resident memory (VmRSS) it
added. The experts are taken in turn within each run, so runs alternate. Writes the median and
min-max per expert to docs/data/tokenizer-memory.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coserve.bench.provenance import write_data  # noqa: E402

EXPERTS = ("general", "coder", "large")
_PROBE = """
import ctypes, gc, sys
from coserve.backends.registry import get_backend
from coserve.config import load_library
from coserve.types import Message, Sampling

kind, name = sys.argv[1], sys.argv[2]
library = load_library()
spec = library.expert(name).model_copy(update={"backend": kind, "options": {}})
backend = get_backend(kind)
if kind == "llamacpp-split":
    from coserve.backends import llama_capi
    llama_capi.lib()  # the runtime is loaded once per process, not per counter
else:  # the libraries are loaded once per process, not per tokenizer
    import gguf, torch  # noqa: F401
    import transformers.integrations.ggml, transformers.modeling_gguf_pytorch_utils  # noqa: F401
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

def rss():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what was freed goes back: only what is kept counts
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))

before = rss()
count = backend.prompt_counter(spec, library.path.parent)
assert count((Message("user", "How many tokens is this?"),), Sampling()) > 0
print(rss() - before)
"""


def _measure(kind: str, expert: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, kind, expert], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} {expert}: {done.stderr[-2000:]}")
    return int(done.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transformers", action="store_true", help="also the transformers backend's tokenizers")
    args = parser.parse_args()
    kinds = ["llamacpp-split"] + (["transformers"] if args.transformers else [])
    start = time.monotonic()
    samples: dict[str, dict[str, list[int]]] = {k: {e: [] for e in EXPERTS} for k in kinds}
    for _ in range(args.runs):
        for kind in kinds:
            for expert in EXPERTS:
                samples[kind][expert].append(_measure(kind, expert))
    mib = 2**20
    table = {
        kind: {
            e: {
                "median_mib": round(statistics.median(v) / mib, 1),
                "min_mib": round(min(v) / mib, 1),
                "max_mib": round(max(v) / mib, 1),
                "runs_bytes": v,
            }
            for e, v in by_expert.items()
        }
        for kind, by_expert in samples.items()
    }
    versions = {p: importlib.metadata.version(p) for p in ("xllamacpp", "transformers") if _installed(p)}
    payload = {"what": "resident memory one prompt counter adds (VmRSS, fresh process)", "versions": versions}
    command = "scripts/tokenizer_memory.py" + "".join(f" {a}" for a in sys.argv[1:])
    path = write_data(ROOT / "docs" / "data" / "tokenizer-memory.json", payload | {"counters": table}, command,
                      time.monotonic() - start)  # fmt: skip
    for kind, by_expert in table.items():
        for e, row in by_expert.items():
            print(f"{kind:<15} {e:<8} {row['median_mib']:>7.1f} MiB ({row['min_mib']}-{row['max_mib']})")
    print(path)
    return 0


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
