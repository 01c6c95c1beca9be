"""Scripts under ``scripts/`` given bad input, run as a user runs them (a subprocess): a one-line error
or an argparse refusal naming the flag, never a traceback (session 12's walks and session 13's walk of
scripts/)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python scripts/<name> ARGS`` from the repository root, this checkout's package first."""
    base = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    argv = [sys.executable, str(ROOT / "scripts" / name), *args]
    env = {**base, **(env or {})}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--measure-s", "0"),  # was a ZeroDivisionError
        ("--duration-s", "-1"),
        ("--factor", "0"),
        ("--factor", "nan"),
        ("--timeout-s", "0"),
    ],
)
def test_load_test_refuses_a_non_positive_number(flag: str, value: str) -> None:
    run = run_script("load_test.py", "--url", f"http://127.0.0.1:{closed_port()}", flag, value)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == f"load_test.py: error: argument {flag}: {value} is not a positive number"


@pytest.mark.parametrize("flag", ["--max-requests", "--max-tokens"])  # --max-requests 0 hung
def test_load_test_refuses_a_count_below_one(flag: str) -> None:
    run = run_script("load_test.py", "--url", f"http://127.0.0.1:{closed_port()}", flag, "0")
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == f"load_test.py: error: argument {flag}: 0 is not a positive number"


def test_load_test_names_an_unreachable_url_in_one_line() -> None:
    url = f"http://127.0.0.1:{closed_port()}"  # was an httpx.ConnectError traceback
    run = run_script("load_test.py", "--url", url, "--measure-s", "1")
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"load_test.py: error: cannot reach {url}/v1/chat/completions (")


@pytest.fixture
def without_torch(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import torch`` fails, as on a machine without ``coserve[torch]``."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def test_gpu_check_without_torch_names_the_extra(without_torch: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    run = run_script("gpu_check.py", "--model", str(model), env=without_torch)  # was an ImportError traceback
    assert run.returncode == 2
    extra = "pip install 'coserve[torch]' (with the torch build for your machine)"
    assert run.stderr == f"gpu_check.py: error: No module named 'torch': {extra}\n"
    assert run_script("gpu_check.py", "--help", env=without_torch).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "missing.gguf"], "--model missing.gguf: no such file"),
        (["--model", "{model}", "--cycles", "0"], "argument --cycles: 0 is too small: give 1 or more"),
    ],
)
def test_gpu_check_refuses_bad_arguments_before_anything_loads(
    without_torch: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    run = run_script("gpu_check.py", *[a.format(model=model) for a in args], env=without_torch)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == f"gpu_check.py: error: {message}"


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("adapt_tune.py", ["--data", "{t}/none", "--json", "{t}/x.json"], "{t}/none/experts.json: cannot read"),
        ("adapt_tune_s14.py", ["--data", "{t}/none", "--json", "{t}/x.json"], "{t}/none/experts.json: cannot read"),
        ("cascade_gate_study.py", ["--data", "{t}/none.jsonl", "--plan", "{t}/p.json"], "{t}/none.jsonl: No such"),
        (
            "cascade_gate_study.py",
            ["--data", "d", "--plan", "p", "--seeds", "0,x"],
            "argument --seeds: '0,x' is not comma-separated numbers (0,1,2)",
        ),
        ("reverify_outcomes.py", ["--data", "{t}/none.jsonl", "--out", "{t}/o.jsonl"], "{t}/none.jsonl: No such"),
        (
            "router_shift.py",
            ["--data", "{t}/n.jsonl", "--experts", "{t}/e.json", "--stage", "design", "--out", "{t}/o"],
            "outcome file not found: {t}/n.jsonl",
        ),
        ("ship_outcomes.py", ["{t}/none.jsonl", "{t}/s.jsonl"], "{t}/none.jsonl: No such"),
        ("ship_outcomes.py", [], "the following arguments are required: run, target"),  # was an IndexError
        ("eval_tables.py", ["{t}/none.json"], "{t}/none.json: No such"),
    ],
)
def test_a_missing_input_is_one_line(tmp_path: Path, script: str, args: list[str], message: str) -> None:
    run = run_script(script, *[a.format(t=tmp_path) for a in args])  # each was a traceback
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1].startswith(f"{script}: error: {message.format(t=tmp_path)}")
    assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("host_start.py", ["--rounds", "0"], "argument --rounds: 0 is too small: give 1 or more"),
        ("host_start.py", ["--library", "{t}/none.yaml"], "library file not found: {t}/none.yaml"),
        ("cluster_scale.py", ["--rows", "0", "--json", "{t}/c"], "argument --rows: 0 is too small: give 1 or more"),
        ("backend_throughput.py", ["fake", "--n", "0"], "argument --n: 0 is too small: give 1 or more"),
        (
            "plan_scale.py",
            ["--time-limit", "0", "--json", "{t}/p.json"],
            "argument --time-limit: 0 is not a number of seconds above 0",
        ),
        (  # a negative count was taken and written into the data file
            "plan_bench_nodes.py",
            ["--max-tokens", "-5", "--json", "{t}/p.json"],
            "argument --max-tokens: -5 is too small: give 1 or more",
        ),
        ("time_setup", ["--repeats", "0"], "--repeats must be 1 or more and --serve-timeout above 0"),
        (
            "binding_parity.py",
            ["--old-ref", "HEAD", "--runs", "0"],
            "--runs, --tokens and --long-tokens must be 1 or more",
        ),
    ],
)
def test_a_count_below_one_or_a_time_of_0_is_refused_before_any_work(
    tmp_path: Path, script: str, args: list[str], message: str
) -> None:
    run = run_script(script, *[a.format(t=tmp_path) for a in args])  # each was a traceback after the work, or none
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1] == f"{script}: error: {message.format(t=tmp_path)}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("script", "usage"),
    [
        ("doc_figures.py", "usage: doc_figures.py [-h] [JOB ...]"),  # was "unknown: --help", exit 1
        ("eval_tables.py", "usage: eval_tables.py [-h] [--at AT] reports [reports ...]"),  # read "--help" as a file
        ("ship_outcomes.py", "usage: ship_outcomes.py [-h] run target"),  # an IndexError
    ],
)
def test_help_is_help(script: str, usage: str) -> None:
    run = run_script(script, "--help")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == usage


def test_gguf_to_hf_without_torch_names_the_extra(without_torch: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    run = run_script("gguf_to_hf.py", str(model), str(tmp_path / "out"), env=without_torch)  # was a traceback
    extra = "pip install 'coserve[torch]' (with the torch build for your machine)"
    assert (run.returncode, run.stderr) == (2, f"gguf_to_hf.py: error: No module named 'torch': {extra}\n")
    missing = run_script("gguf_to_hf.py", str(tmp_path / "none.gguf"), str(tmp_path / "out"), env=without_torch)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[-1] == f"gguf_to_hf.py: error: {tmp_path}/none.gguf: no such file"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("backend_throughput.py", ["llamacpp", "--expert", "nope"], "--expert nope: not an expert of the default"),
        ("soak_pool.py", ["--expert", "nope"], "--expert nope: not an expert of the default library"),
        ("backend_throughput.py", ["nope"], "unknown backend 'nope'; known: llamacpp, llamacpp-split, openai"),
        ("soak_pool.py", ["--backend", "nope"], "unknown backend 'nope'; known: llamacpp, llamacpp-split, openai"),
    ],
)
def test_an_unknown_expert_or_backend_is_refused_before_any_expert_loads(
    script: str, args: list[str], message: str
) -> None:
    run = run_script(script, *args)  # a KeyError or ConfigError traceback
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1].startswith(f"{script}: error: {message}")


@pytest.mark.parametrize("script", ["setup", "setup-peer", "setup-vllm"])
def test_a_setup_script_takes_help_and_refuses_a_typo_before_installing(script: str) -> None:
    # Each ignored its arguments: `--help` ran the whole install (setup-peer: a 5-minute compile) and
    # `scripts/setup --tset` set up without the test tools. PYTHON=false: an install that starts fails.
    env = {**os.environ, "PYTHON": "false"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(ROOT / "scripts" / script), *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert f"scripts/{script}" in helped.stdout or script == "setup-peer"
    refused = run("--tset")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"scripts/{script}: unknown argument(s): --tset (")


DESIGN_ARGS = ["--data", "{t}/none.jsonl", "--experts", "{t}/e.json", "--stage", "design", "--out", "{t}/o.json"]


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [  # each was found only after loading and embedding the data (here: "outcome file not found" first)
        ("router_design.py", [*DESIGN_ARGS, "--candidates", "stack,stak"], "--candidates: unknown stak; known: stack,"),
        ("router_shift.py", [*DESIGN_ARGS, "--candidates", "stack-bal,x"], "--candidates: unknown x; known: stack,"),
        (  # the split the defaults were chosen on may not judge them
            "adapt_tune_s14.py",
            ["--data", "{t}/none", "--json", "{t}/x.json", "--salts", "tune2,tune"],
            "--salts: distinct, non-empty salts other than 'tune'",
        ),
        ("adapt_tune_s14.py", ["--data", "{t}/none", "--json", "{t}/x.json", "--seeds", "0"], "--seeds: at least 1"),
        (
            "adapt_tune_s14.py",
            ["--data", "{t}/none", "--json", "{t}/x.json", "--settings", "starved,defaults"],
            "--settings: 'defaults' first",
        ),
        (  # was silently ignored without --heldout
            "cascade_measure.py",
            ["--train", "{t}/none.jsonl", "--library", "{t}/l.yaml", "--mix-single", "{t}/m.jsonl"],
            "--mix-single needs --heldout",
        ),
    ],
)
def test_a_flag_that_cannot_work_is_refused_before_any_work(
    tmp_path: Path, script: str, args: list[str], message: str
) -> None:
    run = run_script(script, *[a.format(t=tmp_path) for a in args])
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1].startswith(f"{script}: error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_soak_pool_help_says_its_drift_needs_80_cycles() -> None:
    run = run_script("soak_pool.py", "--help")
    assert run.returncode == 0, run.stderr
    assert "the drift's windows need 80: with fewer it is read from the first cycle" in " ".join(run.stdout.split())


def test_every_scored_adapt_stage_names_a_stage_function_beside_the_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """``adapt_tune.py --stage sNN`` finds ``adapt_tune_sNN.sNN_stage`` by name: a stage listed without its
    module or function would fail only after the tuning streams were fitted (minutes)."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    tune = importlib.import_module("adapt_tune")
    for stage in tune.SCORED_STAGES:
        assert callable(getattr(importlib.import_module(f"adapt_tune_{stage}"), f"{stage}_stage")), stage
