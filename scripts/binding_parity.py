#!/usr/bin/env python3
"""Backend llamacpp-split through two llama.cpp bindings: same greedy tokens? same decode speed?

    .venv/bin/python scripts/binding_parity.py --old-ref 50c5b3e --old-python /path/with/llama_cpp/python

"old" is the backend as commit ``--old-ref`` wrote it (llama-cpp-python's ctypes bindings; its
``coserve`` is taken from git into a temporary folder and run by ``--old-python``, an interpreter
with llama-cpp-python and coserve's dependencies); "new" is this checkout's (the llama.cpp inside
xllamacpp). Each run is a fresh process that loads one expert, answers the prompts greedily
(recording every generated token id) and then times one long answer (decode tokens per second,
first token to last). Runs alternate old, new, old, new, ... ``--runs`` times each; the token ids
of every run must agree. The two bindings reach different llama.cpp builds, so greedy answers may
part late (float sums in another order); the faithful port is shown by "new" against llama.cpp's
own server on the very same library (backend llamacpp, one slot): the same prompt tokens and text.
Writes docs/data/llama-bindings-<commit>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = [
    "Name three primary colours.",
    "What is 2 + 2?",
    "Write a Python function that reverses a string.",
    "Explain what a hash table is in two sentences.",
    "Translate 'good morning' into Spanish.",
]
LONG_PROMPT = "Write a long story about a dragon who learns to bake bread."


def child(expert: str, backend_name: str, tokens: int, long_tokens: int) -> None:
    """In a fresh process, against whichever ``coserve`` is first on the path: print one JSON line."""
    import inspect
    import time

    from coserve.backends.registry import get_backend
    from coserve.config import load_library
    from coserve.types import Chunk, Message, Sampling

    library = load_library()
    spec = library.expert(expert).model_copy(update={"backend": backend_name, "options": {"n_parallel": 1}})
    base = library.path.parent if library.path else None
    backend = get_backend(backend_name)
    staged = backend.stage(spec, base)
    # load receives the staged object (the Backend contract); the old tree's load took the folder
    handle = backend.load(spec, staged if "staged" in inspect.signature(backend.load).parameters else base)
    ids: list[int] = []
    if hasattr(staged, "piece"):  # llamacpp-split: record the token ids its decode loop turns into text
        piece = type(staged).piece

        def recording(self: object, token: int, special: bool = False) -> bytes:
            if not special:
                ids.append(int(token))
            return piece(self, token, special)

        type(staged).piece = recording
    answers = []
    for prompt in PROMPTS:
        ids.clear()
        parts: list[Chunk] = []
        settings = Sampling(max_tokens=tokens, temperature=0.0)
        backend.stream(handle, (Message("user", prompt),), settings, lambda c, keep=parts.append: bool(keep(c)))
        usage = parts[-1].usage
        answers.append(
            {
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "ids": list(ids),
                "text": "".join(c.text for c in parts),
                "finish": parts[-1].finish_reason,
            }
        )
    times: list[float] = []
    settings = Sampling(max_tokens=long_tokens, temperature=0.0)
    backend.stream(
        handle, (Message("user", LONG_PROMPT),), settings, lambda c: times.append(time.perf_counter()) and False
    )
    decoded = len(times) - 2  # chunks after the first token's, less the closing (empty) chunk
    print(json.dumps({"answers": answers, "decode_tokens": decoded, "decode_tok_s": decoded / (times[-2] - times[0])}))
    backend.unload(handle)
    backend.unstage(staged)


def _old_tree(ref: str, into: Path) -> Path:
    """The ``coserve`` package as commit ``ref`` has it, extracted under ``into``."""
    archive = subprocess.run(["git", "archive", ref, "coserve"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _run(python: str, path: Path, expert: str, args: argparse.Namespace, backend: str = "llamacpp-split") -> dict:
    argv = [python, __file__, "--child", expert, backend, "--tokens", str(args.tokens)]
    env = {"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    argv += ["--long-tokens", str(args.long_tokens), "--old-ref", "-"]
    out = subprocess.run(argv, cwd=path, env=env, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{python} ({path}) failed on {expert}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two answers differ (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-ref", required=True, help="a commit whose llamacpp-split uses llama-cpp-python")
    parser.add_argument("--old-python", default=sys.executable, help="a Python with llama-cpp-python installed")
    parser.add_argument("--experts", nargs="+", default=["general", "coder", "large"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--long-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--note", default="", help="what the machine was doing during the run")
    parser.add_argument("--child", nargs=2, metavar=("EXPERT", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.runs, args.tokens, args.long_tokens) < 1:
        parser.error("--runs, --tokens and --long-tokens must be 1 or more")
    if args.child:
        child(args.child[0], args.child[1], args.tokens, args.long_tokens)
        return
    sys.path.insert(0, str(ROOT))
    from coserve.bench.provenance import git_commit, write_data

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old_path = _old_tree(args.old_ref, Path(tmp))
        for expert in args.experts:
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for _ in range(args.runs):  # alternating, so a slow spell of the machine hits both
                runs["old"].append(_run(args.old_python, old_path, expert, args))
                runs["new"].append(_run(sys.executable, ROOT, expert, args))
            server = _run(sys.executable, ROOT, expert, args, backend="llamacpp")["answers"]
            old, new = runs["old"][0]["answers"], runs["new"][0]["answers"]
            repeatable = all(r["answers"] == rs[0]["answers"] for rs in runs.values() for r in rs)
            speeds = {side: [r["decode_tok_s"] for r in rs] for side, rs in runs.items()}
            results[expert] = {
                "each_side_repeatable": repeatable,
                "old_new_identical_token_ids": old == new,
                "old_new_first_different_token": [
                    _first_difference(a["ids"], b["ids"]) for a, b in zip(old, new, strict=True)
                ],
                "new_equals_llamacpp_server": [
                    (a["text"], a["prompt_tokens"]) == (b["text"], b["prompt_tokens"])
                    for a, b in zip(new, server, strict=True)
                ],
                "answers_old": old,
                "answers_new": new,
                "answers_llamacpp_server": server,
                "decode_tok_s": {
                    side: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
                    for side, v in speeds.items()
                },
                "decode_tokens": [r["decode_tokens"] for side in runs.values() for r in side],
            }
            summary = {k: v for k, v in results[expert].items() if not k.startswith("answers")}
            print(
                expert,
                json.dumps(
                    {**summary, "decode_tok_s": {k: round(v["median"], 1) for k, v in summary["decode_tok_s"].items()}}
                ),
            )
    payload = {
        "note": "decode speed: one request at a time, greedy, first token to last. " + args.note,
        "old": f"llama-cpp-python bindings, coserve at {args.old_ref}",
        "new": "ctypes on the llama.cpp inside xllamacpp (coserve/backends/llama_capi.py)",
        "prompts": PROMPTS,
        "long_prompt": LONG_PROMPT,
        "max_tokens": args.tokens,
        "long_max_tokens": args.long_tokens,
        "experts": results,
    }
    out = args.out or ROOT / "docs" / "data" / f"llama-bindings-{git_commit(ROOT)[:7]}.json"
    print(write_data(out, payload))


if __name__ == "__main__":
    main()
