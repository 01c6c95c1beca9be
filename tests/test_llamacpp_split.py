"""backend: llamacpp-split — llama.cpp's model (RAM tier) and context (ACTIVE tier) held apart,
with coserve's own continuous-batching decode loop. End to end on the default library's real
models (the llama.cpp inside xllamacpp, through coserve/backends/llama_capi.py); the stop-string
scanner also as a unit."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coserve.backends.chores import StopStrings as _Stops
from coserve.config import ExpertSpec, load_library
from coserve.errors import AssetError, ContextTooLong, ExpertFailed, ExpertLoadError
from coserve.types import Chunk, Message, Sampling


def test_stops_cut_at_the_first_stop_string_even_across_pieces() -> None:
    stops = _Stops(("\n\n", "END"))
    assert stops.feed("Hello E") == ("Hello ", False)  # "E" may begin "END": held back
    assert stops.feed("ND of it") == ("", True)
    stops = _Stops(("END",))
    assert stops.feed("an EN") == ("an ", False)
    assert stops.feed("try") == ("ENtry", False)  # not a stop after all: released
    assert stops.feed(" two\n") == (" two\n", False)
    assert stops.flush() == ""


def test_stops_pick_the_earliest_hit_and_flush_the_held_tail() -> None:
    stops = _Stops(("b", "ab"))
    assert stops.feed("xxab") == ("xx", True)
    stops = _Stops(("STOP",))
    assert stops.feed("ends in ST") == ("ends in ", False)
    assert stops.flush() == "ST"
    assert _Stops(()).feed("anything") == ("anything", False)


def test_a_llama_cpp_laid_out_otherwise_than_declared_is_named_field_by_field() -> None:
    """ctypes cannot check a structure's layout: the library's defaults, read through our
    declarations, must be llama.cpp's (a shifted field reads as another's value)."""
    from coserve.backends.llama_capi import _CONTEXT_DEFAULTS, ContextParams, _mismatches

    params = ContextParams(**{k: v for k, v in _CONTEXT_DEFAULTS.items() if v is not None})
    assert _mismatches(params, _CONTEXT_DEFAULTS) == []
    params.type_k, params.offload_kqv = 8, False
    assert _mismatches(params, _CONTEXT_DEFAULTS) == [
        "type_k=8 (expected 1)",
        "offload_kqv=False (expected True)",
    ]


# -- end to end: real models ----------------------------------------------------------------------
needs_llama = pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp")
# A prompt no expert can answer within LENGTH_TOKENS tokens: its finish is "length", at exactly that many.
LONG_ANSWER = "Count from 1 to 100, separated by commas."
LENGTH_TOKENS = 24


def _spec(name: str = "general", **update: object) -> tuple[ExpertSpec, Path | None]:
    library = load_library()
    spec = library.expert(name).model_copy(update={"backend": "llamacpp-split", **update})
    return spec, library.path.parent if library.path else None


def _run(backend, handle, prompt: str, tokens: int = 24, **sampling: object) -> tuple[str, Chunk]:  # type: ignore[no-untyped-def]
    parts: list[Chunk] = []
    settings = Sampling(max_tokens=tokens, temperature=0.0, **sampling)  # type: ignore[arg-type]
    backend.stream(handle, (Message("user", prompt),), settings, lambda c: parts.append(c) and False)
    return "".join(c.text for c in parts), parts[-1]


TIE_NATS = 0.2  # a greedy step whose two best tokens are closer than this may flip with the batch's shape


def _run_logged(backend, handle, prompt: str, tokens: int):  # type: ignore[no-untyped-def]
    """``_run`` greedy with log-probabilities: (text, last chunk, [(token, top-1 minus top-2 logprob)])."""
    parts: list[Chunk] = []
    settings = Sampling(max_tokens=tokens, temperature=0.0, logprobs=True, top_logprobs=2)
    backend.stream(handle, (Message("user", prompt),), settings, lambda c: parts.append(c) and False)
    steps = [(e.token, e.top[0][1] - e.top[1][1]) for c in parts for e in c.logprobs]
    return "".join(c.text for c in parts), parts[-1], steps


@pytest.fixture(scope="module")
def general():  # type: ignore[no-untyped-def]
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend

    backend = LlamaCppSplitBackend()
    spec, base = _spec(options={"n_parallel": 2})
    staged = backend.stage(spec, base)
    handle = backend.load(spec, staged)
    yield backend, handle, spec, base
    backend.unload(handle)
    backend.unstage(staged)


@pytest.mark.e2e
@needs_llama
def test_requests_beyond_the_slots_wait_and_batched_answers_agree_with_single_ones(general) -> None:  # type: ignore[no-untyped-def]
    backend, handle, spec, base = general
    prompts = [
        "Name three primary colours.",
        "What is 2 + 2?",
        "Say hello in French.",
        "Name a planet.",
        LONG_ANSWER,
    ]
    # single runs with each step's two most likely tokens, to know where greedy is near a tie
    alone = [_run_logged(backend, handle, p, tokens=LENGTH_TOKENS) for p in prompts]
    fresh = []
    staged = backend.stage(spec, base)
    for _ in range(2):  # greedy from the same (empty) cache: the same answer, token for token
        context = backend.load(spec, staged)
        fresh.append(_run(backend, context, prompts[0], tokens=LENGTH_TOKENS))
        backend.unload(context)
    backend.unstage(staged)
    assert fresh[0] == fresh[1]
    results: dict[int, tuple[str, Chunk]] = {}

    def one(i: int) -> None:
        results[i] = _run(backend, handle, prompts[i], tokens=LENGTH_TOKENS)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]  # 5 requests, 2 slots
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # Batched, a request's rows share each step's matrix products with whatever else the step holds
    # (another's token, another's prompt chunk), and llama.cpp's CPU kernels round differently with
    # the batch's shape. Which requests share a step depends on thread timing, so where the single
    # run's two most likely tokens are within TIE_NATS of each other, the batched greedy answer may
    # take the other one (seen: "Bonjour!" / "Bonjour in French"). Up to the first such step it
    # must be the single answer exactly: a sequence that read another's cells or positions is wrong
    # from its first token. (Whole answers are compared exactly by the fresh-cache check above and
    # test_answers_are_llama_cpp_servers_own_on_the_same_library.)
    checked = 0
    for i, (single, last, steps) in enumerate(alone):
        batched, batched_last = results[i]
        sure = next((k for k, (_, margin) in enumerate(steps) if margin < TIE_NATS), len(steps))
        prefix = "".join(token for token, _ in steps[:sure])
        assert batched.startswith(prefix), (single, batched, sure)
        checked += sure
        assert batched_last.usage and last.usage and batched_last.usage.prompt_tokens == last.usage.prompt_tokens
    assert checked >= 10  # the check is not vacuous: these prompts have clear first tokens
    assert results[4][1].finish_reason == "length" and results[4][1].usage.completion_tokens == LENGTH_TOKENS
    for text, last in [(text, last) for text, last, _ in alone] + list(results.values()):
        assert text.strip() and last.usage is not None
        assert 0 < last.usage.completion_tokens <= LENGTH_TOKENS
        # "length" exactly when the cap was reached; below it only an end-of-turn token ends an answer
        assert last.finish_reason == ("length" if last.usage.completion_tokens == LENGTH_TOKENS else "stop")
    assert alone[-1][1].finish_reason == "length" and alone[-1][1].usage.completion_tokens == LENGTH_TOKENS
    assert sorted(handle.runtime.free) == [0, 1]  # every sequence given back


@pytest.mark.e2e
@needs_llama
def test_answers_are_llama_cpp_servers_own_on_the_same_library() -> None:
    """The split backend drives the llama.cpp that backend llamacpp's server runs (xllamacpp's): one
    slot, greedy, the server's own chat template engine and sampler against ours — the same prompt
    tokens and the same text."""
    from coserve.backends.registry import get_backend

    prompts = ["Name three primary colours.", "Translate 'good morning' into Spanish.", LONG_ANSWER]
    answers: dict[str, list[tuple[str, int]]] = {}
    for name in ("llamacpp-split", "llamacpp"):
        backend = get_backend(name)
        spec, base = _spec(context=1024, options={"n_parallel": 1})
        spec = spec.model_copy(update={"backend": name})
        staged = backend.stage(spec, base)
        handle = backend.load(spec, staged)
        try:
            runs = [_run(backend, handle, p, tokens=LENGTH_TOKENS) for p in prompts]
        finally:
            backend.unload(handle)
            backend.unstage(staged)
        answers[name] = [(text, last.usage.prompt_tokens if last.usage else -1) for text, last in runs]
    assert answers["llamacpp-split"] == answers["llamacpp"]


@pytest.mark.e2e
@needs_llama
def test_a_prompt_already_in_another_slot_shares_its_cells(general, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Same prompt while it is still generating in the other slot: the newcomer takes the running
    sequence's prompt cells (all but the last token) instead of decoding them again, and answers
    as the same prompt does when it finds its cells kept in its own slot."""
    from coserve.backends.llama_decode import DecodeContext

    backend, handle, _, _ = general
    prompt = "Tell me about the history of the bicycle in three sentences."
    _run(backend, handle, prompt, tokens=12)  # its slot keeps the prompt's cells
    alone, _ = _run(backend, handle, prompt, tokens=12)  # reuses them: decodes only the last prompt token
    reused: list[tuple[int, int]] = []
    admit = DecodeContext._admit

    def spy(self, request):  # type: ignore[no-untyped-def]
        admit(self, request)
        reused.append((request.reused, len(request.prompt)))

    monkeypatch.setattr(DecodeContext, "_admit", spy)
    # The slot that ran `alone` keeps its cells, and the long request takes that slot (its own
    # prefix); the newcomer gets the other slot and its longest match is the running sequence.
    long_done: list[str] = []

    def long() -> None:
        text, _ = _run(backend, handle, prompt, tokens=200)
        long_done.append(text)

    runner = threading.Thread(target=long)
    runner.start()
    deadline = time.monotonic() + 30
    while len(reused) < 1 and time.monotonic() < deadline:  # the long request is admitted
        time.sleep(0.01)
    second, _ = _run(backend, handle, prompt, tokens=12)
    runner.join(timeout=120)
    assert len(reused) == 2
    (first_reused, n), (second_reused, n2) = reused
    assert n == n2 and first_reused == n - 1  # the long request: its own slot's kept cells
    assert second_reused == n - 1  # the newcomer: every prompt cell but the last, from its neighbour
    # The same cells as its own kept ones; decoded in a step beside the long request, its rows may
    # round otherwise (see the batching test above): wrong cells would differ from the first token.
    assert second.split()[:2] == alone.split()[:2], (alone, second)
    assert long_done and long_done[0].split()[:2] == alone.split()[:2]


@pytest.mark.e2e
@needs_llama
def test_a_caller_that_leaves_frees_its_slot(general, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from coserve.backends.llama_decode import DecodeContext

    backend, handle, _, _ = general
    ended: list[tuple[int, object]] = []
    end = DecodeContext._end

    def spy(self, request, outcome):  # type: ignore[no-untyped-def]
        ended.append((request.generated, outcome))
        end(self, request, outcome)

    monkeypatch.setattr(DecodeContext, "_end", spy)
    seen: list[str] = []
    # The caller stops listening after its third piece: the loop ends the request at its next step.
    backend.stream(
        handle,
        (Message("user", "Write a long story about a dragon."),),
        Sampling(max_tokens=400, temperature=0.0),
        lambda c: seen.append(c.text) or len(seen) >= 3,
    )
    assert len(seen) == 3
    deadline = time.monotonic() + 60
    while not ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(ended) == 1
    generated, outcome = ended[0]
    assert outcome == "cancelled" and 3 <= generated < 400  # cut short, not run to its 400 tokens
    assert sorted(handle.runtime.free) == [0, 1]
    text, last = _run(backend, handle, LONG_ANSWER, tokens=LENGTH_TOKENS)
    assert text and last.finish_reason == "length" and last.usage and last.usage.completion_tokens == LENGTH_TOKENS


@pytest.mark.e2e
@needs_llama
def test_stop_strings_end_the_answer_before_them(general) -> None:  # type: ignore[no-untyped-def]
    backend, handle, _, _ = general
    full, _ = _run(backend, handle, "Name three primary colours.", tokens=32)
    words = full.split()
    assert len(words) > 4, full
    stop = words[3]
    cut, last = _run(backend, handle, "Name three primary colours.", tokens=32, stop=(stop,))
    assert cut == full[: full.index(stop)]
    assert last.finish_reason == "stop"


@pytest.mark.e2e
@needs_llama
def test_sampling_with_a_seed_is_repeatable_and_max_tokens_is_a_length_finish(general) -> None:  # type: ignore[no-untyped-def]
    backend, handle, _, _ = general
    settings = Sampling(max_tokens=12, temperature=0.9, top_p=0.9, seed=11)
    runs = []
    for _ in range(2):
        parts: list[Chunk] = []
        backend.stream(handle, (Message("user", "Tell me a story."),), settings, parts.append)
        runs.append(("".join(c.text for c in parts), parts[-1]))
    assert runs[0] == runs[1]
    assert runs[0][1].finish_reason == "length" and runs[0][1].usage.completion_tokens == 12


@pytest.mark.e2e
@needs_llama
def test_a_decode_that_fails_mid_generation_fails_its_requests_and_the_expert_serves_on(
    general,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coserve.backends import llama_capi

    backend, handle, _, _ = general
    lib = llama_capi.lib()
    real = lib.llama_decode
    calls = {"n": 0}

    def failing(ctx, batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return -3 if calls["n"] == 4 else real(ctx, batch)  # the runtime fails at the 4th step

    monkeypatch.setattr(lib, "llama_decode", failing)
    seen: list[Chunk] = []
    with pytest.raises(ExpertFailed, match="llama_decode returned -3"):
        backend.stream(
            handle, (Message("user", "Count to twenty."),), Sampling(max_tokens=40, temperature=0.0), seen.append
        )
    assert 0 < len(seen) < 40  # it had streamed tokens before the failure
    monkeypatch.setattr(lib, "llama_decode", real)
    text, last = _run(backend, handle, LONG_ANSWER, tokens=LENGTH_TOKENS)
    assert text and last.finish_reason == "length" and last.usage and last.usage.completion_tokens == LENGTH_TOKENS
    assert sorted(handle.runtime.free) == [0, 1]


@pytest.mark.e2e
@needs_llama
def test_a_prompt_longer_than_the_context_is_refused_before_it_runs() -> None:
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend

    backend = LlamaCppSplitBackend()
    spec, base = _spec(context=256, options={"n_parallel": 1})
    handle = backend.load(spec, backend.stage(spec, base))
    try:
        with pytest.raises(ContextTooLong):
            _run(backend, handle, "word " * 400)
        text, _ = _run(backend, handle, "Hi")  # the expert still serves
        assert text
    finally:
        model = handle.runtime.model
        backend.unload(handle)
        backend.unstage(model)
    assert model.ptr is None
    with pytest.raises(ExpertFailed):
        _run(backend, handle, "Hi")  # unloaded


@pytest.mark.e2e
@needs_llama
def test_missing_and_corrupt_files_are_load_errors(tmp_path: Path) -> None:
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend

    backend = LlamaCppSplitBackend()
    spec, _ = _spec()
    missing = spec.model_copy(update={"source": str(tmp_path / "absent.gguf"), "sha256": None})
    with pytest.raises(AssetError):
        backend.stage(missing, None)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 4096)
    with pytest.raises(ExpertLoadError, match="failed to load"):
        backend.stage(spec.model_copy(update={"source": str(bad), "sha256": None}), None)


_RSS_PROBE = """
import sys
import jinja2.sandbox  # the chat template's engine is not the expert's
from coserve.backends import llama_capi
from coserve.backends.llamacpp_split import LlamaCppSplitBackend
from coserve.config import load_library

llama_capi.lib()  # the runtime itself is not the expert's

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))

library = load_library()
spec = library.expert(sys.argv[1]).model_copy(update={"backend": "llamacpp-split"})
base = library.path.parent
backend = LlamaCppSplitBackend()
before = rss()
staged = backend.stage(spec, base)
ram = rss()
handle = backend.load(spec, staged)
active = rss()
backend.unload(handle)
back = rss()
backend.unstage(staged)
sizes = backend.nbytes(spec, base), backend.footprint(spec, base)
print(*sizes, ram - before, active - before, back - before, rss() - before)
"""


@pytest.mark.e2e
@needs_llama
@pytest.mark.parametrize("expert", ["general", "coder", "large"])
def test_tiers_hold_what_the_budgets_count(expert: str) -> None:
    """In a fresh process: RAM holds the weights (nbytes), ACTIVE the footprint; unloading gives
    the context's memory back and unstaging the model's."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, expert], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    nbytes, footprint, ram, active, back, gone = map(int, out.stdout.split()[-6:])
    assert abs(ram - nbytes) / nbytes < 0.10, (ram, nbytes)
    assert abs(active - footprint) / footprint < 0.10, (active, footprint)
    assert abs(back - ram) < 0.05 * footprint, (back, ram)
    assert gone < 0.05 * footprint, gone


@pytest.mark.e2e
@needs_llama
def test_a_q8_0_kv_cache_halves_the_cache_and_still_answers() -> None:
    from coserve.backends.gguf_header import kv_cache_bytes, read_header
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend
    from coserve.backends.registry import check_expert

    backend = LlamaCppSplitBackend()
    spec, base = _spec(options={"n_parallel": 2})
    quantized = spec.model_copy(update={"options": {"n_parallel": 2, "kv_cache_type": "q8_0"}})
    kv = kv_cache_bytes(read_header(backend_path(spec, base)), spec.context * 2)
    saved = backend.footprint(spec, base) - backend.footprint(quantized, base)
    assert saved == kv - int(kv * 34 / 64)  # q8_0: 34 bytes per 32 values, against 2 bytes each
    handle = backend.load(quantized, backend.stage(quantized, base))
    try:
        text, _ = _run(backend, handle, "Name three primary colours.")
        assert "red" in text.lower() or "blue" in text.lower(), text
    finally:
        model = handle.runtime.model
        backend.unload(handle)
        backend.unstage(model)
    with pytest.raises(ValueError, match="kv_cache_type: Input should be 'f16' or 'q8_0'"):
        check_expert(spec.model_copy(update={"options": {"kv_cache_type": "q3"}}))  # refused at start


def backend_path(spec: ExpertSpec, base: Path | None) -> Path:
    from coserve.backends.llama_memory import gguf_path

    return gguf_path(spec, base)


@pytest.mark.e2e
@needs_llama
def test_unloading_fails_running_and_waiting_requests_cleanly() -> None:
    """The pool never unloads an expert with work in flight, but the backend must not hang or
    leak if it happens: the running request and those waiting for a slot get ExpertFailed."""
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend

    backend = LlamaCppSplitBackend()
    spec, base = _spec(options={"n_parallel": 1})
    handle = backend.load(spec, backend.stage(spec, base))
    model = handle.runtime.model
    outcomes: dict[int, BaseException | str] = {}
    started = threading.Event()

    def one(i: int) -> None:
        try:
            backend.stream(
                handle,
                (Message("user", "Write a long story about a dragon."),),
                Sampling(max_tokens=300, temperature=0.0),
                lambda c: started.set() or False,
            )
            outcomes[i] = "finished"
        except ExpertFailed as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]  # 1 slot: 1 runs, 2 wait
    for t in threads:
        t.start()
    assert started.wait(60)
    backend.unload(handle)
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(o, ExpertFailed) and "unloaded" in str(o) for o in outcomes.values()), outcomes
    assert len(outcomes) == 3
    backend.unstage(model)
    assert model.ptr is None


@pytest.mark.e2e
@needs_llama
@pytest.mark.parametrize(("cells", "overlap"), [(512, False), (1024, True)])
def test_a_smaller_shared_cache_admits_a_request_only_when_it_fits_to_its_end(cells: int, overlap: bool) -> None:
    """Two slots over 512 cells, each request reserving its prompt + 300 tokens: the second waits
    for the first to end instead of both running out of cells mid-answer; over 1024 both run."""
    from coserve.backends.gguf_header import kv_cache_bytes, read_header
    from coserve.backends.llamacpp_split import LlamaCppSplitBackend

    backend = LlamaCppSplitBackend()
    spec, base = _spec(context=512, options={"n_parallel": 2, "kv_cache_tokens": cells})
    full, _ = _spec(context=512, options={"n_parallel": 2})
    kv = kv_cache_bytes(read_header(backend_path(spec, base)), 1024)
    assert backend.footprint(full, base) - backend.footprint(spec, base) == kv - kv * cells // 1024
    staged = backend.stage(spec, base)
    handle = backend.load(spec, staged)
    times: dict[int, list[float]] = {0: [], 1: []}
    ends: dict[int, Chunk] = {}

    def one(i: int) -> None:
        def emit(chunk: Chunk) -> bool:
            times[i].append(time.monotonic())
            ends[i] = chunk
            return False

        settings = Sampling(max_tokens=300, temperature=0.0)
        backend.stream(handle, (Message("user", f"Write a long story about a dragon number {i}."),), settings, emit)

    try:
        first = threading.Thread(target=one, args=(0,))
        first.start()
        while not times[0]:  # the first is admitted and generating
            time.sleep(0.01)
        second = threading.Thread(target=one, args=(1,))
        second.start()
        first.join(timeout=300)
        second.join(timeout=300)
        assert handle.runtime.reserved == 0 and sorted(handle.runtime.free) == [0, 1]
    finally:
        backend.unload(handle)
        backend.unstage(staged)
    for end, chunks in ((ends[0], times[0]), (ends[1], times[1])):
        assert end.usage is not None and len(chunks) > 20, "both answered at length"
        assert end.finish_reason == ("length" if end.usage.completion_tokens == 300 else "stop")
    assert (times[1][0] < times[0][-1]) is overlap  # the second started before the first ended?
