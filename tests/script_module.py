"""Load a research script under ``scripts/`` as a module, so its tests can call its functions; and the
separable outcomes its tests run candidates on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from coserve.eval.data import OutcomeSet, embed_cached, load_costs, load_outcomes
from coserve.router.embedders import make_embedder

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py``, executed as a fresh module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass with string annotations looks its module up there
    spec.loader.exec_module(module)
    return module


def separable_inputs(tmp_path: Path) -> tuple[OutcomeSet, np.ndarray, np.ndarray]:
    """``test_eval_harness.write_separable``'s outcomes, their experts' parameters (B) and their
    ``hashing+features`` vectors (256 hashed columns, then the prompt features)."""
    from test_eval_harness import write_separable

    data, experts = write_separable(tmp_path)
    outcomes, _ = load_outcomes(data)
    cost = load_costs(experts).aligned(outcomes.experts).params_b
    return outcomes, cost, embed_cached(outcomes.prompts, make_embedder("hashing+features"), tmp_path)
