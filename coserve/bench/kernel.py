"""The BLAS kernel ``coserve bench adapt`` computes with, pinned so that its figures do not depend on the CPU.

OpenBLAS (bundled with numpy and with scipy) picks a kernel by CPU at load: SkylakeX on an AVX-512 machine,
Haswell on one with AVX2, older ones below. The kernels add in other orders, so a matrix product differs in
its last bits between machines; the fits amplify that (a classifier's lbfgs path, the stack predictor's
Adam steps: predictions apart by up to 0.016 from the same vectors), and the replay is chaotic in it (one
bit changes which alarm fires). Rounding at stage boundaries cannot absorb differences of that size, so
the benchmark pins the kernel instead: ``OPENBLAS_CORETYPE=Haswell`` on any x86-64 CPU with AVX2 and FMA
(Intel since 2013, AMD since 2015), set before numpy loads, which is when OpenBLAS reads it. numpy's own
SIMD paths (AVX-512 or AVX2) were checked and gave the same bits. Elsewhere (an ARM machine, an x86 one
without AVX2) nothing is pinned and the report says which kernels ran. Imports no numpy at import time.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

__all__ = ["PINNED_KERNEL", "blas_kernels", "kernel_cache", "pin_blas_kernel"]

logger = logging.getLogger(__name__)

PINNED_KERNEL = "Haswell"  # AVX2 + FMA: the newest kernel every x86-64 CPU of the last decade runs
_NEEDS = {"avx2", "fma"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no such file)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def pin_blas_kernel(
    flags: set[str] | None = None, machine: str | None = None, numpy_loaded: bool | None = None
) -> str | None:
    """Set ``OPENBLAS_CORETYPE`` to ``PINNED_KERNEL`` where this CPU runs it (whatever the caller set);
    the kernel pinned, or None where none is: not x86-64, no AVX2/FMA, or numpy loaded already (its
    OpenBLAS has picked; pinning scipy's alone would mix two kernels). ``blas_kernels`` says what ran."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("x86_64", "amd64") or not _NEEDS <= (cpu_flags() if flags is None else flags):
        return None
    if "numpy" in sys.modules if numpy_loaded is None else numpy_loaded:
        logger.warning("numpy is loaded already: the BLAS kernel stays the CPU's (the report names it)")
        return None
    os.environ["OPENBLAS_CORETYPE"] = PINNED_KERNEL
    return PINNED_KERNEL


def blas_kernels() -> list[dict[str, str]]:
    """The BLAS libraries (numpy's and scipy's: both loaded first), each with its version and the kernel
    it runs (threadpoolctl's view), by library name: threadpoolctl's order is not the same in every process."""
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    found = [
        {"library": Path(i["filepath"]).name, "version": str(i.get("version")), "kernel": str(i.get("architecture"))}
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    return sorted(found, key=lambda k: k["library"])


def kernel_tag(kernels: list[dict[str, str]]) -> str:
    """One name for the kernels that ran (``haswell``), as the embedding cache's folder keys them."""
    return "-".join(sorted({k["kernel"].lower() for k in kernels})) or "none"


def kernel_cache(kernels: list[dict[str, str]]) -> Path:
    """The cache folder for vectors the kernels made (``<cache>/blas-haswell``): a vector's last bits are its
    BLAS kernel's, so a cache another kernel filled (``coserve eval`` unpinned) must not feed a pinned run."""
    from coserve.paths import cache_dir

    return cache_dir() / f"blas-{kernel_tag(kernels)}"
