"""``scripts/soak_pool.py``'s drift windows, by hand: cycles 41-60 against the last 20, or (fewer than 80
cycles) the first cycle against the last 20, said in ``drift_from``."""

from __future__ import annotations

from types import ModuleType

import pytest
from script_module import load_script

MIB = 2**20


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    return load_script("soak_pool")


def test_drift_from_the_windows_after_warm_up(soak: ModuleType) -> None:
    samples = [200 * MIB] * 40 + [100 * MIB] * 40 + [110 * MIB] * 20  # 100 cycles: the first 40 warm up
    figures = soak.drift(samples)
    assert figures["drift_from"] == "cycles 41-60"
    assert (figures["rss_start_mib"], figures["rss_end_mib"]) == (100, 110)
    assert figures["drift_pct"] == pytest.approx(10.0)
    assert figures["trend_pct_per_100_cycles"] is not None and figures["trend_pct_per_100_cycles"] > 0


def test_fewer_than_80_cycles_read_the_drift_from_the_first(soak: ModuleType) -> None:
    figures = soak.drift([200 * MIB] + [100 * MIB] * 9)  # the last 20 are all ten: mean 110
    assert figures["drift_from"] == "cycle 1 (fewer than 80 cycles: allocator warm-up included)"
    assert (figures["rss_start_mib"], figures["rss_end_mib"]) == (200, 110)
    assert figures["drift_pct"] == pytest.approx(-45.0)
    assert figures["trend_pct_per_100_cycles"] is None
