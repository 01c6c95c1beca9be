"""A router of the user's own in ``coserve eval``: ``--routers module:Class`` or ``path/to/file.py:Class``.

The class is one of the two parts the built-in routers are made of, with their estimator contract
(``coserve.router.predict.Predictor``, ``coserve.router.classify.Classifier``):

- a **quality predictor**: ``fit(X, Y)`` on the training rows' prompt vectors ``X [n, d]`` and
  scores ``Y [n, E]`` (NaN where an expert has no score), returning self; ``predict(X)`` -> expected
  scores ``[n, E]``. It is evaluated as ``prompt-<name>``: each prompt goes to the expert with the best
  predicted score less the cost weight times its cost, swept over the cost weights as the built-in
  ``prompt-*`` routers are.
- a **category classifier**: ``fit(X, categories)``, returning self; ``classes_`` and
  ``predict_proba(X)`` -> ``[n, len(classes_)]``. It is evaluated as ``map-<name>``: its posterior is
  calibrated (temperature on a validation split) and its top category sent through the budget-optimal
  category -> expert map at each budget, as the built-in ``map-*`` routers are.

``X`` is the eval's prompt vectors ``[n, d]``, unless the class says ``inputs = "text"``: it is then given
the prompts' texts (a list of ``n`` strings) in their place, for the same rows in the same order on every
call (``fold_inputs``), so a router may read the text itself (keyword rules, its own tokenizer or
embedding, a length feature); ``inputs = "vectors"`` is the default.

``<name>`` is the class's ``name`` attribute (a string), else the class's name in lower case; a
constructor taking ``seed`` or ``random_state`` is given the fold's seed. Everything is checked when
the spec is loaded, before anything is embedded: the module imports, the class exists and has the
methods, its ``inputs`` is one of ``INPUTS``, the router's name is not a built-in router's. This module
knows nothing about the command line.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from coserve.errors import ConfigError

__all__ = [
    "INPUTS", "UserRouter", "checked_factory", "fold_inputs", "load_user_router", "parse_routers", "reads_text",
]  # fmt: skip

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
INPUTS = ("vectors", "text")  # what a class's `inputs` attribute may say it reads; the first is the default


@dataclass(frozen=True)
class UserRouter:
    """A loaded ``--routers`` spec."""

    spec: str  # as given: module:Class or path/to/file.py:Class
    name: str  # the router's name in the report: prompt-<name> or map-<name>
    kind: str  # "predictor" or "classifier"
    cls: type
    inputs: str = INPUTS[0]  # "vectors": X is the prompt vectors; "text": a list of the prompts' texts


def _module(where: str, spec: str) -> Any:
    """The module a spec names: a .py file by path, else an importable module name."""
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise ConfigError(f"--routers {spec}: no such file {where}")
            name = f"coserve_user_router_{abs(hash(str(path)))}"
            found = importlib.util.spec_from_file_location(name, path)
            if found is None or found.loader is None:
                raise ConfigError(f"--routers {spec}: cannot import {where}")
            module = importlib.util.module_from_spec(found)
            sys.modules[name] = module  # dataclasses and pickling look a class's module up here
            found.loader.exec_module(module)
            return module
        return importlib.import_module(where)
    except ConfigError:
        raise
    except BaseException as exc:  # the user's module failed as it ran: its error, on one line
        if isinstance(exc, KeyboardInterrupt):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"--routers {spec}: cannot import {where}: {type(exc).__name__}: {first}") from None


@cache
def load_user_router(spec: str) -> UserRouter:
    """The router a ``module:Class`` or ``file.py:Class`` spec names, checked; ConfigError says what is wrong."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"--routers {spec}: a router of your own is module:Class or path/to/file.py:Class")
    cls = getattr(_module(where, spec), attr, None)
    if not inspect.isclass(cls):
        raise ConfigError(f"--routers {spec}: {where} has no class {attr}")
    has = {m for m in ("fit", "predict", "predict_proba") if callable(getattr(cls, m, None))}
    if "fit" in has and "predict_proba" in has:
        kind, prefix = "classifier", "map"
    elif "fit" in has and "predict" in has:
        kind, prefix = "predictor", "prompt"
    else:
        found = f"only {', '.join(sorted(has))}" if has else "none of fit, predict, predict_proba"
        wanted = "a quality predictor needs fit and predict, a category classifier fit and predict_proba"
        raise ConfigError(f"--routers {spec}: {attr} has {found}; {wanted}")
    own = getattr(cls, "name", None)
    name = own if isinstance(own, str) and own else attr.lower()
    if not _NAME.match(name):
        raise ConfigError(f"--routers {spec}: name {name!r}: letters, digits, '_', '.' and '-' only")
    inputs = getattr(cls, "inputs", INPUTS[0])
    if not isinstance(inputs, str) or inputs not in INPUTS:
        said = " or ".join(f'"{i}"' for i in INPUTS)
        raise ConfigError(f"--routers {spec}: inputs = {inputs!r}: {said} (what fit and predict are given)")
    return UserRouter(spec, f"{prefix}-{name}", kind, cls, inputs)


def parse_routers(
    text: str | None, available: Sequence[str], builtin: Sequence[str], missing: dict[str, str]
) -> tuple[list[str] | None, dict[str, str]]:
    """``--routers``: the router names to evaluate (None: every ``available`` one) and the user's routers
    among them (name -> spec). An unknown name, a spec that does not load, and a user router named as
    a ``builtin`` one (every built-in router's name, whatever the data) are refused here, before
    anything is embedded; ``missing`` says why built-in routers cannot run."""
    if not text:
        return None, {}
    names: list[str] = []
    users: dict[str, str] = {}
    for item in filter(None, (r.strip() for r in text.split(","))):
        if ":" not in item:
            names.append(item)
            continue
        router = load_user_router(item)
        if router.name in builtin or router.name in users:
            clash = "a built-in router's" if router.name in builtin else f"that of {users[router.name]}"
            raise ConfigError(f"--routers {item}: the name {router.name} is {clash}; give the class another name")
        if router.kind == "classifier" and not any(n.startswith("map-") for n in available):
            why = missing.get("map-*", "needs at least two categories")
            raise ConfigError(f"--routers {item}: {router.name} is a category classifier: {why}")
        users[router.name] = item
        names.append(router.name)
    unknown = [r for r in names if r not in available and r not in users]
    if unknown:
        why = "".join(f"; {name}: {reason}" for name, reason in missing.items())
        raise ConfigError(f"--routers: {', '.join(unknown)} not available; available: {', '.join(available)}{why}")
    return names, users


class _Checked:
    """A user's estimator whose outputs are checked against the contract as they come, naming the spec."""

    def __init__(self, router: UserRouter, seed: int = 0, columns: int | None = None):
        accepted = inspect.signature(router.cls).parameters
        params = {key: seed for key in ("seed", "random_state") if key in accepted}
        self.router = router
        self.columns = columns  # predict's columns: the experts
        self.model = router.cls(**params)

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.model.classes_)

    def fit(self, X: Any, y: Any) -> _Checked:
        self.model.fit(X, y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        out = np.asarray(self.model.predict(X), dtype=float)
        self._shape(out, len(X), self.columns, "predict")
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        out = np.asarray(self.model.predict_proba(X), dtype=float)
        self._shape(out, len(X), len(self.classes_), "predict_proba")
        return out

    def _shape(self, out: np.ndarray, rows: int, columns: int | None, method: str) -> None:
        if out.ndim != 2 or out.shape[0] != rows or (columns is not None and out.shape[1] != columns):
            want = f"[{rows}, {columns if columns is not None else 'experts'}]"
            raise ConfigError(f"--routers {self.router.spec}: {method} returned shape {out.shape}, not {want}")
        if not np.all(np.isfinite(out)):
            raise ConfigError(f"--routers {self.router.spec}: {method} returned NaN or infinite values")


def reads_text(user_routers: Mapping[str, str], router: str) -> bool:
    """Whether ``router`` is a user's class that reads the prompts' texts, not their vectors."""
    spec = user_routers.get(router)
    return spec is not None and load_user_router(spec).inputs == "text"


def fold_inputs(fold: Any, router: str) -> tuple[Any, Any, Any, Any]:
    """What a router's part is given on a fold's (``coserve.eval.sweeps.Fold``) training, inner,
    validation and held-out rows: the
    vectors, or the prompts' texts of the same rows in the same order for a user's class with
    ``inputs = "text"``."""
    train, test = fold.X, fold.X_test
    if reads_text(fold.user_routers, router):
        train, test = list(fold.texts), list(fold.texts_test)
        return train, [train[i] for i in fold.inner], [train[i] for i in fold.val], test
    return train, train[fold.inner], train[fold.val], test


def checked_factory(spec: str, columns: int | None = None) -> Any:
    """A factory in the registries' shape (``factory(name, seed=...)``) that builds the spec's class,
    its ``predict`` held to ``columns`` columns (the experts) where given."""
    router = load_user_router(spec)

    def make(_name: str, seed: int = 0) -> _Checked:
        return _Checked(router, seed, columns)

    return make
