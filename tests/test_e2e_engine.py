"""End to end, real experts: greedy outputs are identical whichever path an expert took to ACTIVE."""

from __future__ import annotations

import asyncio

import pytest

from coserve.assets import model_path
from coserve.backends.llamacpp import LlamaCppBackend
from coserve.backends.staging import drop_cache
from coserve.config import load_library
from coserve.engine.pool import ExpertPool
from coserve.types import Chunk, Message, Sampling, Tier

pytestmark = pytest.mark.e2e

PROMPT = (Message("user", "Name three primary colours."),)


def _greedy(pool: ExpertPool, name: str) -> tuple[str, str]:
    """(text, tier the expert was in before) for a 24-token greedy answer."""

    async def run() -> tuple[str, str]:
        before = pool.residency()[name].value
        lease = await pool.acquire(name)
        parts: list[str] = []

        def emit(chunk: Chunk) -> bool:
            parts.append(chunk.text)
            return False

        try:
            await asyncio.get_running_loop().run_in_executor(
                None, pool.backends[name].stream, lease.handle, PROMPT, Sampling(24, 0.0, 1.0, 7), emit
            )
        finally:
            lease.release()
        await asyncio.sleep(0.05)  # let the release settle (evictions happen there)
        return "".join(parts), before

    return asyncio.run(run())


def test_greedy_output_is_identical_across_tier_paths() -> None:
    library = load_library()
    base = library.path.parent if library.path else None
    backend = LlamaCppBackend()
    sizes = {n: model_path(library.expert(n), base).stat().st_size for n in ("general", "coder")}
    drop_cache(model_path(library.expert("general"), base))
    loaded = {n: backend.footprint(library.expert(n), base) for n in ("general", "coder")}
    one_at_a_time = max(loaded.values()) + 2**20  # the ACTIVE tier holds one of the two
    assert one_at_a_time < sum(loaded.values())

    # RAM holds both: an evicted expert drops to RAM and comes back from there.
    pool = ExpertPool(library, dict.fromkeys(library.expert_names, backend), one_at_a_time, ram_budget_bytes=2**31)
    from_disk, tier1 = _greedy(pool, "general")
    _greedy(pool, "coder")
    assert pool.residency()["general"] is Tier.RAM
    from_ram, tier2 = _greedy(pool, "general")
    asyncio.run(pool.close())

    # RAM holds one: an evicted expert drops to DISK and is reloaded from the file.
    ram_one = sizes["coder"] + 2**20
    pool = ExpertPool(library, dict.fromkeys(library.expert_names, backend), one_at_a_time, ram_budget_bytes=ram_one)
    _greedy(pool, "general")
    _greedy(pool, "coder")
    assert pool.residency()["general"] is Tier.DISK
    reloaded, tier3 = _greedy(pool, "general")
    asyncio.run(pool.close())

    assert (tier1, tier2, tier3) == ("disk", "ram", "disk")
    assert from_disk.strip(), "the expert produced no text"
    assert from_disk == from_ram == reloaded
