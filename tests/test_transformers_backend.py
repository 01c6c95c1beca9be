"""The transformers (GPU) backend: refused clearly where its packages are missing.

Its real runs are ``scripts/gpu_check.py`` (on an H200 and on CPU; figures in docs/serving.md):
CI has no torch, so here only the refusal is tested.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from coserve.backends.registry import get_backend
from coserve.config import load_library
from coserve.errors import ConfigError
from tests.conftest import write_library


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
def test_backend_without_torch_is_refused_with_the_install_line(tmp_path: Path) -> None:
    fields = {"backend": "transformers", "source": "hf", "options": {}}
    library = load_library(write_library(tmp_path, all_fields=fields))
    assert {e.backend for e in library.experts} == {"transformers"}  # the file itself is valid
    with pytest.raises(ConfigError, match=r"torch.*not installed: pip install 'coserve\[torch\]'"):
        get_backend("transformers")
