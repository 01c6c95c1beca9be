"""`coserve bench adapt` gives the same figures whichever BLAS kernel the CPU would pick.

OpenBLAS picks its kernel by CPU (AVX-512 machines get SkylakeX, others Haswell or older) and the kernels
sum in other orders; the fits amplify a last-bit difference, and the replay is chaotic in it (docs/adapt.md,
"The same figures on another machine"). ``OPENBLAS_CORETYPE`` makes one machine act as another: each run is a
fresh process (OpenBLAS reads the variable once, at load) with its own embedding cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import coserve
from coserve.bench.kernel import PINNED_KERNEL, cpu_flags, pin_blas_kernel
from tests.test_bench_adapt import _outcomes

ROOT = Path(coserve.__file__).resolve().parents[1]


def _run(tmp_path: Path, coretype: str, argv: list[str]) -> dict:
    cache, out = tmp_path / f"cache-{coretype}", tmp_path / f"{coretype}.json"
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype, "COSERVE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "coserve.cli", *argv, "--json", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    report.pop("provenance")  # the command line names the output file; the rest must match
    return report


@pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(), reason="emulating another x86 CPU needs AVX2")
def test_the_figures_do_not_depend_on_the_cpus_blas_kernel(tmp_path: Path) -> None:
    prior, stream, experts = tmp_path / "prior.jsonl", tmp_path / "stream.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 300)
    _outcomes(stream, 2, 300)
    experts.write_text(json.dumps({e: {"params_b": b} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}))
    argv = ["bench", "adapt", "--prior", str(prior), "--stream", str(stream), "--experts", str(experts)]
    argv += ["--budget-params", "3", "--requests", "3000"]
    # the machine's own kernel (SkylakeX where it has AVX-512) against an older CPU's
    kernels = ["SkylakeX" if "avx512f" in cpu_flags() else "Haswell", "Sandybridge"]
    first, second = (_run(tmp_path, kernel, argv) for kernel in kernels)
    assert first["quality"] == second["quality"]
    assert first == second
    assert {k["kernel"] for k in first["blas"]} == {PINNED_KERNEL}  # numpy's OpenBLAS and scipy's


@pytest.mark.parametrize(
    ("machine", "flags", "pinned"),
    [
        ("x86_64", {"sse2", "avx", "avx2", "fma", "avx512f"}, PINNED_KERNEL),
        ("x86_64", {"sse2", "avx"}, None),  # no AVX2: the Haswell kernel would not run
        ("aarch64", {"asimd"}, None),  # OpenBLAS's ARM kernels are another family
    ],
)
def test_the_kernel_is_pinned_only_where_the_cpu_runs_it(
    machine: str, flags: set[str], pinned: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")  # the caller's setting is overridden where pinned
    assert pin_blas_kernel(flags, machine, numpy_loaded=False) == pinned
    assert os.environ["OPENBLAS_CORETYPE"] == (pinned or "SkylakeX")


def test_no_kernel_is_pinned_once_numpy_has_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    # numpy's OpenBLAS has read the variable; setting it now would pin scipy's alone: two kernels in one run
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    assert pin_blas_kernel({"avx2", "fma"}, "x86_64", numpy_loaded=True) is None
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"


def test_embeddings_are_cached_per_blas_kernel(tmp_path: Path, cache: Path) -> None:
    """A vector's last bits are its kernel's: a cache another kernel filled (``coserve eval`` on this CPU,
    an unpinned run) must not feed a pinned run, so the benchmark keys its cache by the kernels that ran."""
    from coserve.bench.kernel import blas_kernels, kernel_tag
    from coserve.cli import main

    prior, experts = tmp_path / "prior.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 120)
    experts.write_text(json.dumps({e: {"params_b": b} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}))
    argv = ["bench", "adapt", "--prior", str(prior), "--experts", str(experts), "--budget-params", "3"]
    argv += ["--requests", "600", "--embedder", "hashing", "--predictor-embedder", "hashing"]
    assert main([*argv, "--json", str(tmp_path / "a.json")]) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["blas"] == blas_kernels() and len(report["blas"]) == 2  # numpy's and scipy's OpenBLAS
    assert len({k["kernel"] for k in report["blas"]}) == 1  # numpy was loaded here: the CPU's own, for both
    assert list((cache / f"blas-{kernel_tag(report['blas'])}" / "embeddings").glob("*.npy"))
    assert not (cache / "embeddings").exists()  # coserve eval's cache is not read or written


_SCRIPTS = sorted(p.stem for p in (ROOT / "scripts").glob("adapt_tune*.py"))
_KERNELS = "import json, os; from coserve.bench.kernel import blas_kernels; "
_KERNELS += "print(json.dumps([os.environ.get('OPENBLAS_CORETYPE'), sorted({k['kernel'] for k in blas_kernels()})]))"


def _kernels_after(first_import: str) -> list:
    """The kernel numpy's and scipy's OpenBLAS run in a fresh process on an older CPU's setting (Sandybridge)
    after ``first_import``, with the scripts' folder on the path as when one runs."""
    env = {**os.environ, "OPENBLAS_CORETYPE": "Sandybridge", "PYTHONPATH": f"{ROOT}:{ROOT / 'scripts'}"}
    code = f"import {first_import}; {_KERNELS}"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(), reason="emulating another x86 CPU needs AVX2")
@pytest.mark.parametrize("script", _SCRIPTS)
def test_the_tuning_scripts_pin_the_kernel_before_numpy_loads(script: str) -> None:
    """The tuning scripts replay in their own process, not through the CLI: each pins as the benchmark does,
    whichever of them is imported first (a stage module imports numpy before ``adapt_tune``)."""
    assert len(_SCRIPTS) >= 10 and "adapt_tune_s14" in _SCRIPTS
    assert _kernels_after("numpy") == ["Sandybridge", ["Sandybridge"]]  # unpinned: the caller's setting rules
    assert _kernels_after(script) == [PINNED_KERNEL, [PINNED_KERNEL]]
