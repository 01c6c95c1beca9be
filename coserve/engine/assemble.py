"""What an Engine is made of, built from a library file's settings (``Engine.build`` calls this).

``assemble`` checks the library's backend options and solves its map from measured outcomes, limits
BLAS threads when the experts share the cores, loads or trains the router (only when one is asked
for: an expert host serves calls an ingress already routed and needs none), creates one backend per
backend name, the executor the generation threads run in, and the tiered pool.

This module knows nothing about scheduling, requests or HTTP.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from coserve.backends.base import Backend
from coserve.backends.registry import check_library, get_backend, shares_cores
from coserve.config import LibraryConfig
from coserve.cpus import limit_blas_threads
from coserve.engine.pool import ExpertPool
from coserve.metrics import Metrics
from coserve.router.embed import Embedder
from coserve.router.measured import with_measured_map
from coserve.router.router import CoERouter

__all__ = ["EngineParts", "assemble"]


@dataclass
class EngineParts:
    """The Engine's constructor arguments, built."""

    library: LibraryConfig  # checked, its map solved
    router: CoERouter | None  # None: built without one (``routed=False``)
    pool: ExpertPool
    metrics: Metrics
    executor: ThreadPoolExecutor


def assemble(
    library: LibraryConfig,
    cache: Path,
    embedder: Embedder | None = None,
    backends: dict[str, Backend] | None = None,
    metrics: Metrics | None = None,
    *,
    routed: bool = True,
) -> EngineParts:
    """The parts of an Engine over ``library`` (see the module doc); ``routed=False``: no router."""
    library = with_measured_map(check_library(library))  # options checked, map solved from outcomes
    metrics = metrics or Metrics()
    if shares_cores(library):
        limit_blas_threads()
    router = CoERouter.load_or_fit(library, cache, embedder) if routed else None
    by_name = dict(backends or {})
    for spec in library.experts:
        if spec.backend not in by_name:
            by_name[spec.backend] = get_backend(spec.backend)
    per_expert = {spec.name: by_name[spec.backend] for spec in library.experts}
    # Generation threads block inside runtimes for a whole request: sized for requests, not cores.
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="coserve-exec")
    memory = library.memory
    pool = ExpertPool(
        library,
        per_expert,
        memory.active,
        executor=executor,
        metrics=metrics,
        ram_budget_bytes=memory.ram,
        min_residency_s=memory.min_residency_s,
    )
    return EngineParts(library, router, pool, metrics, executor)
