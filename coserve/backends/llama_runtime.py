"""The ``xllamacpp`` module, imported only once the settings its runtime reads at load are made.

llama.cpp's CPU backend in ``xllamacpp`` is built with OpenMP (GNU libgomp). It runs one thread per
core and meets a barrier after every operation of a step. libgomp reads how a thread waits at a
barrier once, when the library loads: by default it spins up to 300,000 times before it sleeps.
On a quiet machine that is the fastest wait. When another process holds one of the cores, though,
the thread that shares that core spins out its time slice at a barrier, is preempted, and the
other threads then wait a whole time slice for it, at nearly every barrier: a step takes tens of
times longer, and since the experts share the cores the whole server stalls while the other
process runs (docs/serving.md, "A whole-server stall"; docs/data/decode-contention-s17.json).
A short spin (``GOMP_SPINCOUNT=1000``; libgomp itself spins 100 to 1,000 times when it has more
threads than cores) sleeps soon enough to leave the core to whoever holds it. ``xllamacpp()`` sets it
before the first import, unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` themselves.
On a quiet machine it costs a few per cent (docs/serving.md); ``GOMP_SPINCOUNT=300000`` restores libgomp's wait.

It knows nothing of experts, models or requests.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

from coserve.backends.llama_memory import bound_heap_arenas

__all__ = ["SPIN_COUNT", "wait_settings", "xllamacpp"]

SPIN_COUNT = 1000  # spins at a barrier before a thread sleeps (libgomp's default: 300,000)
_USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def wait_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to ``environ`` before libgomp loads (none where the user chose a wait)."""
    if any(key in environ for key in _USER_KEYS):
        return {}
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


@functools.cache
def xllamacpp() -> Any:
    """``xllamacpp``, its runtime's process-wide settings made first (heap arenas, barrier wait)."""
    os.environ.update(wait_settings(os.environ))
    bound_heap_arenas()
    import xllamacpp as module

    return module
