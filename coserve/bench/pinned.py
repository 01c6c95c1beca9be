"""Importing this module pins the BLAS kernel as ``coserve bench adapt`` does (``coserve.bench.kernel``).

A script that replays the online router in its own process (``scripts/adapt_tune.py`` and its stages)
imports it first, before numpy, which is when OpenBLAS reads ``OPENBLAS_CORETYPE``; a second import does
nothing. ``PINNED`` is the kernel pinned, or None where none was (the script's output names the kernels
that ran, ``blas_kernels``).
"""

from __future__ import annotations

from coserve.bench.kernel import pin_blas_kernel

__all__ = ["PINNED"]

PINNED = pin_blas_kernel()
