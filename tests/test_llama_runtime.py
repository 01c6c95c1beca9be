"""The llama.cpp runtime's process-wide settings (coserve/backends/llama_runtime.py): OpenMP's barrier
spin is bounded before libgomp loads, so a busy core does not stall the server; the user's own
choice wins."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coserve.backends.llama_runtime import SPIN_COUNT, wait_settings

ROOT = Path(__file__).resolve().parents[1]
needs_llama = pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="needs xllamacpp")

# Loads the C API in a fresh process; prints the wait variables and whether libgomp was mapped before.
_PROBE = """
import json, os
from coserve.backends import llama_capi
maps = lambda: open("/proc/self/maps").read()
before = "libgomp" in maps()
llama_capi.lib()
print(json.dumps({"before": before, "after": "libgomp" in maps(),
                  "spin": os.environ.get("GOMP_SPINCOUNT"), "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def test_a_short_spin_unless_the_user_chose_a_wait() -> None:
    assert wait_settings({}) == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert wait_settings({"PATH": "/bin"}) == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert wait_settings({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert wait_settings({"GOMP_SPINCOUNT": "300000"}) == {}
    assert SPIN_COUNT < 300_000  # libgomp's own default is what stalls the server under contention


def _probe(**env: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env={**base, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@needs_llama
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_the_spin_is_set_before_libgomp_loads() -> None:
    """libgomp reads the variable once, when it loads: it must be in the environment by then."""
    seen = _probe()
    assert seen == {"before": False, "after": True, "spin": str(SPIN_COUNT), "policy": None}


@needs_llama
def test_the_users_wait_is_kept() -> None:
    assert _probe(GOMP_SPINCOUNT="300000")["spin"] == "300000"
    seen = _probe(OMP_WAIT_POLICY="PASSIVE")
    assert seen["policy"] == "PASSIVE" and seen["spin"] is None
