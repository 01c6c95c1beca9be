"""The RAM tier of a file-backed expert: its file's pages read into the page cache.

``stage(path)`` (DISK -> RAM) reads the whole file once, so every page of it is in host memory
and a runtime that then maps the file (llama.cpp does) loads at memory speed instead of disk
speed. ``unstage(staged)`` (RAM -> DISK) asks the kernel to drop the file's pages again, so the
DISK tier really is the disk. ``read_bandwidth`` measures the floor of a move.

The pages are not pinned (no held mapping, no ``mlock``): the page cache keeps them while memory
is not under pressure, and the pool's RAM budget is what keeps memory from being under pressure.
Pinning (a locked mapping, or a pinned host copy on GPU machines) is future work.
This module knows nothing about experts or budgets.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Staged", "drop_cache", "read_bandwidth", "stage", "unstage"]

_CHUNK = 16 * 2**20  # bytes per read


def _read_through(path: Path) -> int:
    """Read the whole file (populates the page cache); returns bytes read."""
    total = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def drop_cache(path: Path) -> None:
    """Ask the kernel to drop the file's clean pages (effective for pages nothing maps)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class Staged:
    """A file whose pages are in host memory."""

    path: Path
    nbytes: int
    seconds: float  # time the move from disk (or cache) took
    released: bool = False  # unstaged: its pages were dropped


def unstage(staged: Staged) -> None:
    """Drop a staged file's pages from host memory (idempotent)."""
    if not staged.released:
        staged.released = True
        drop_cache(staged.path)


def stage(path: Path) -> Staged:
    """Bring a file's pages into host memory."""
    start = time.perf_counter()
    size = _read_through(path)
    return Staged(path, size, time.perf_counter() - start)


def read_bandwidth(path: Path, from_disk: bool) -> float:
    """Bytes per second reading the file, from disk (cache dropped first) or from the page cache."""
    if from_disk:
        drop_cache(path)
    else:
        _read_through(path)  # warm
    start = time.perf_counter()
    size = _read_through(path)
    return size / max(time.perf_counter() - start, 1e-9)
