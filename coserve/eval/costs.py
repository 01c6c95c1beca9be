"""The experts file of outcome data: each expert's size and prices, checked field by field.

``experts.json`` is ``{expert: {"params_b", "input_price", "output_price"}}``: billions of active
parameters and USD per million input/output tokens, each a number >= 0 or null (unknown). Every other
key is refused, so a mistyped ``params`` does not quietly become an unknown size. This module knows
nothing about prompts or routers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coserve.errors import ConfigError

__all__ = ["COST_KEYS", "ExpertCosts", "load_costs"]

COST_KEYS = ("params_b", "input_price", "output_price")
_UNITS = {"params_b": "billions of parameters, e.g. 7", "input_price": "USD per million tokens"}


@dataclass(frozen=True)
class ExpertCosts:
    """Per-expert costs from ``experts.json``; NaN where the file says null."""

    names: tuple[str, ...]
    params_b: np.ndarray  # float64 [E], billions of active parameters
    price: np.ndarray  # float64 [E], USD per million tokens, mean of input and output price
    source: str = "the experts file"  # the file they were read from, for messages

    def aligned(self, experts: Sequence[str], scored_in: str | None = None) -> ExpertCosts:
        """The costs in the order of ``experts``; raises ConfigError naming experts without costs
        (and ``scored_in``, the outcome file that scores them, when given)."""
        missing = [e for e in experts if e not in self.names]
        if missing:
            where = f", which {scored_in} scores" if scored_in else ""
            raise ConfigError(f"{self.source}: no entry for {missing}{where}")
        idx = [self.names.index(e) for e in experts]
        return ExpertCosts(tuple(experts), self.params_b[idx], self.price[idx], self.source)

    def budget_axis(self, axis: str | None = None) -> str:
        """``axis`` ("params" or "price"; None: params where every expert has it, else price), refused
        naming the experts without it."""
        by_axis = {"params": self.params_b, "price": self.price}
        lacking = {a: [n for n, v in zip(self.names, by_axis[a], strict=True) if not np.isfinite(v)] for a in by_axis}
        if axis is None:
            if lacking["params"] and lacking["price"]:
                raise ConfigError(
                    f"{self.source}: no params_b for {lacking['params']} and no prices for {lacking['price']}: "
                    "give every expert params_b, or every expert both prices"
                )
            return "price" if lacking["params"] else "params"
        if lacking[axis]:
            other = "price" if axis == "params" else "params"
            field = "params_b" if axis == "params" else "input_price and output_price"
            way_out = f"budget on {other} (--budget-{other})" if not lacking[other] else "give them one"
            raise ConfigError(f"{self.source}: no {field} for {lacking[axis]}: {way_out}")
        return axis


def _number(key: str, value: Any) -> float:
    """A cost field's value: a finite number >= 0, or NaN for null."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        unit = _UNITS.get(key, _UNITS["input_price"])
        raise ConfigError(f"{key}: not a number: {value!r} ({unit})")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not finite")
    if value < 0:
        raise ConfigError(f"{key}: {value} is below 0")
    return float(value)


def load_costs(path: str | Path) -> ExpertCosts:
    """Read ``experts.json``: ``{expert: {params_b, input_price, output_price}}`` (nulls allowed)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a spreadsheet's byte order mark
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the experts file: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: the experts file must be a non-empty mapping of expert -> costs")
    names, params, prices = [], [], []
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: {name}: must be a mapping with {', '.join(COST_KEYS)}")
        unknown = [key for key in spec if key not in COST_KEYS]
        if unknown:
            raise ConfigError(f"{path}: {name}.{unknown[0]}: unknown key (known: {', '.join(COST_KEYS)})")
        try:
            values = {key: _number(key, spec.get(key)) for key in COST_KEYS}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {name}.{exc.message}") from None
        names.append(str(name))
        params.append(values["params_b"])
        prices.append((values["input_price"] + values["output_price"]) / 2)
    return ExpertCosts(tuple(names), np.asarray(params, float), np.asarray(prices, float), str(path))
