"""Whether a library's memory budgets can hold its experts, from their sizes.

What each budget counts (coserve.engine.pool): ``memory.active`` a loaded expert's whole footprint
(``Backend.footprint``), ``memory.ram`` the weights (``Backend.nbytes``) of every expert not on DISK,
loaded ones included: a loaded expert keeps what its RAM tier staged (llama.cpp's model in host memory,
the page cache of its file, a `transformers` expert's pinned host copy of its GPU weights).

* An expert whose footprint exceeds ``active``, or whose weights exceed ``ram``, can never be loaded
  within the budgets: the pool refuses its loads (503 ``expert_unavailable``, the message giving both
  byte counts), and ``coserve serve`` says so at start, as it does for a missing model file.
* When the experts ``active`` holds at once have more weights than ``ram``, the RAM tier goes over its
  budget while they are loaded (the pool evicts staged files for room in RAM, never a loaded expert):
  a warning at start, naming the numbers. A GPU's ACTIVE tier may well be larger than the host's RAM
  budget; what must fit in ``ram`` is the weights of what ``active`` holds, not ``active`` itself.

This module knows nothing about requests, scheduling or HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from coserve.assets import is_assembled
from coserve.backends.base import Backend
from coserve.config import LibraryConfig

__all__ = ["EXACT_UP_TO", "check_budgets", "held_weights", "over_budget", "ram_warning"]

EXACT_UP_TO = 20  # experts: up to this many, the heaviest set ACTIVE holds is found over every subset


def over_budget(name: str, nbytes: int, footprint: int, ram: int, active: int) -> str | None:
    """Why ``name`` can never be loaded within the budgets (bytes), or None when it can."""
    if footprint > active:
        return (
            f"expert {name!r} needs {footprint} bytes when loaded (weights, KV cache and buffers), "
            f"more than the ACTIVE memory budget ({active} bytes)"
        )
    if nbytes > ram:
        return (
            f"expert {name!r} has {nbytes} bytes of weights, more than the RAM memory budget ({ram} bytes), "
            "which holds a loaded expert's weights too"
        )
    return None


def held_weights(sizes: Mapping[str, tuple[int, int]], active: int) -> tuple[int, tuple[str, ...]]:
    """The most weight bytes that experts loaded together within ``active`` hold, and those experts;
    ``sizes``: expert -> (weights, footprint) in bytes. Exact up to ``EXACT_UP_TO`` experts; past
    that, the experts taken greedily by weight per footprint byte (a lower bound)."""
    names = [n for n, (_, footprint) in sizes.items() if footprint <= active]
    weights = np.array([sizes[n][0] for n in names], dtype=np.int64)
    footprints = np.array([sizes[n][1] for n in names], dtype=np.int64)
    if len(names) <= EXACT_UP_TO:
        held, used = np.zeros(1, np.int64), np.zeros(1, np.int64)  # per subset, bit i = names[i]
        for w, f in zip(weights, footprints, strict=True):
            held, used = np.concatenate([held, held + w]), np.concatenate([used, used + f])
        held[used > active] = -1
        best = int(np.argmax(held))
        return int(held[best]), tuple(n for i, n in enumerate(names) if best >> i & 1)
    chosen, used_bytes = [], 0
    for i in np.argsort(-weights / np.maximum(footprints, 1), kind="stable"):
        if used_bytes + footprints[i] <= active:
            chosen.append(names[i])
            used_bytes += int(footprints[i])
    return sum(sizes[n][0] for n in chosen), tuple(chosen)


def ram_warning(sizes: Mapping[str, tuple[int, int]], ram: int, active: int) -> str | None:
    """A one-line warning when the experts ``active`` holds at once have more weights than ``ram``."""
    held, names = held_weights(sizes, active)
    if held <= ram:
        return None
    return (
        f"memory.ram ({ram} bytes) is less than the weights of the experts memory.active ({active} bytes) "
        f"holds at once ({held} bytes: {', '.join(names)}); loaded experts keep their weights in host "
        f"memory, so the RAM tier goes over its budget while they are loaded: set memory.ram to at least {held}"
    )


def check_budgets(library: LibraryConfig, backends: Mapping[str, Backend]) -> tuple[dict[str, str], str | None]:
    """At start: the experts that can never be loaded within the library's budgets (expert -> why),
    and the RAM warning (or None). An expert with a model file is measured only when the file is there
    (nothing is assembled for it); the others, and those whose sizes cannot be read, are left out:
    their first load measures them (and the pool refuses them there)."""
    base = library.path.parent if library.path else None
    sizes: dict[str, tuple[int, int]] = {}
    for spec in library.experts:
        if spec.parts and not is_assembled(spec, base):
            continue
        backend = backends[spec.name]
        try:
            sizes[spec.name] = (backend.nbytes(spec, base), backend.footprint(spec, base))
        except Exception:  # an unreadable file: the load says what is wrong with it
            continue
    ram, active = library.memory.ram, library.memory.active
    never = {n: why for n, (w, f) in sizes.items() if (why := over_budget(n, w, f, ram, active)) is not None}
    return never, ram_warning({n: size for n, size in sizes.items() if n not in never}, ram, active)
