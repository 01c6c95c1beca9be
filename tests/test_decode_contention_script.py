"""``scripts/decode_contention.py``'s settings: each names the OpenMP wait its worker runs under, the
user's own wait variables replaced; a mistyped setting is refused before anything loads."""

from __future__ import annotations

from types import ModuleType

import pytest
from script_module import load_script

from coserve.errors import ConfigError


@pytest.fixture(scope="module")
def contention() -> ModuleType:
    return load_script("decode_contention")


def test_each_setting_is_one_wait(contention: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")  # the caller's own: never leaks into a setting
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    waits = {s: {k: v for k, v in contention.setting_env(s).items() if k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
             for s in ("default", "passive", "active", "spin=300000")}  # fmt: skip
    assert waits == {
        "default": {},  # coserve's own (coserve.backends.llama_runtime)
        "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
        "active": {"OMP_WAIT_POLICY": "ACTIVE"},
        "spin=300000": {"GOMP_SPINCOUNT": "300000"},
    }


@pytest.mark.parametrize("setting", ["spin=", "spin=-1", "spin=1k", "quick"])
def test_an_unknown_setting_is_refused(contention: ModuleType, setting: str) -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        contention.setting_env(setting)
