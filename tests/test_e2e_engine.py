"""End to end, real experts: greedy outputs are identical whichever path an expert took to ACTIVE."""

from __future__ import annotations

import asyncio

import pytest
from conftest import greedy

from coserve.assets import model_path
from coserve.backends.registry import get_backend
from coserve.backends.staging import drop_cache
from coserve.config import load_library
from coserve.engine.pool import ExpertPool
from coserve.types import Tier

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend_name", ["llamacpp", "llamacpp-split"])
def test_greedy_output_is_identical_across_tier_paths(backend_name: str) -> None:
    """DISK -> ACTIVE, RAM -> ACTIVE and a reload after eviction to DISK give the same greedy text
    (for llamacpp RAM is the file's pages; for llamacpp-split the model loaded without a context)."""
    library = load_library()
    base = library.path.parent if library.path else None
    backend = get_backend(backend_name)
    sizes = {n: backend.nbytes(library.expert(n), base) for n in ("general", "coder")}  # what RAM counts
    drop_cache(model_path(library.expert("general"), base))
    loaded = {n: backend.footprint(library.expert(n), base) for n in ("general", "coder")}
    one_at_a_time = max(loaded.values()) + 2**20  # the ACTIVE tier holds one of the two
    assert one_at_a_time < sum(loaded.values())

    # RAM holds both: an evicted expert drops to RAM and comes back from there.
    pool = ExpertPool(library, dict.fromkeys(library.expert_names, backend), one_at_a_time, ram_budget_bytes=2**31)
    from_disk, tier1 = greedy(pool, "general")
    greedy(pool, "coder")
    assert pool.residency()["general"] is Tier.RAM
    from_ram, tier2 = greedy(pool, "general")
    asyncio.run(pool.close())

    # RAM holds one: an evicted expert drops to DISK and is reloaded from the file.
    ram_one = sizes["coder"] + 2**20
    pool = ExpertPool(library, dict.fromkeys(library.expert_names, backend), one_at_a_time, ram_budget_bytes=ram_one)
    greedy(pool, "general")
    greedy(pool, "coder")
    assert pool.residency()["general"] is Tier.DISK
    reloaded, tier3 = greedy(pool, "general")
    asyncio.run(pool.close())

    assert (tier1, tier2, tier3) == ("disk", "ram", "disk")
    assert from_disk.strip(), "the expert produced no text"
    assert from_disk == from_ram == reloaded
