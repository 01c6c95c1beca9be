"""A router trained from outcome data and saved as a directory: ``manifest.json`` + ``arrays.npz``.

Kinds: ``map-<classifier>`` (category posterior -> budget-optimal category->expert map),
``prompt-<predictor>`` (per-prompt predicted scores, cost-weighted choice), ``hybrid`` (a mix
of both) and ``stack`` (a ridge predictor over the category posterior beside the prompt vector,
``coserve.router.predict.stack_design``; cost-weighted choice). The manifest holds the kind,
hyper-parameters, expert names and costs, categories, the solved map, the temperature and the
fallback thresholds; the npz holds the classifier, predictor
and OOD-scorer arrays under ``clf/``, ``pred/`` and ``ood/``, the per-category table ``S`` and
priors ``p``, and the training ids with their category (so an expert can be added later without
refitting). No pickle. This module knows nothing about the evaluation harness or data files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coserve.errors import ConfigError, InfeasibleConstraints

__all__ = ["TRAINED_FORMAT_VERSION", "TrainedRouter", "add_expert", "load_trained", "read_router_directory"]

TRAINED_FORMAT_VERSION = 1  # layout of a ``coserve train`` directory's manifest; bump when it changes


@dataclass
class TrainedRouter:
    """Everything a trained router decides with."""

    kind: str  # "map-<classifier>", "prompt-<predictor>", "hybrid" or "stack"
    experts: list[str]
    params_b: np.ndarray  # [E] billions of active parameters (NaN unknown)
    price: np.ndarray  # [E] USD per million tokens (NaN unknown)
    classes: list[str]  # categories, the classifier's column order
    S: np.ndarray  # [K, E] mean score of each expert on each category's training prompts
    p: np.ndarray  # [K] category priors of the training prompts
    budget_axis: str  # "params" or "price"
    budget: float  # in the axis's unit, per request on average
    train_ids: np.ndarray  # [n] str
    train_category: np.ndarray  # [n] int, index into classes
    classifier: Any = None
    predictor: Any = None
    ood: Any = None
    temperature: float = 1.0
    alpha: float = 1.0  # weight of the category prior in the expected score (hybrid)
    lam: float = 0.0  # cost weight of the per-prompt choice (prompt-*, hybrid)
    assignment: list[int] = field(default_factory=list)  # expert index per category (map)
    fallback_expert: str = ""
    min_confidence: float = 0.0  # top calibrated category probability below this -> fallback
    ood_threshold: float = float("inf")  # OOD score above this -> fallback
    hyper: dict[str, Any] = field(default_factory=dict)

    @property
    def cost(self) -> np.ndarray:
        """Per-expert cost on the budget axis."""
        return self.params_b if self.budget_axis == "params" else self.price

    def category_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated category probabilities ``[n, K]`` (columns in ``classes`` order)."""
        from coserve.router.calibrate import apply_temperature

        if self.classifier is None:
            raise ConfigError(f"a {self.kind} router has no category classifier")
        raw = self.classifier.predict_proba(X)
        out = np.zeros((raw.shape[0], len(self.classes)))
        for j, c in enumerate(np.asarray(self.classifier.classes_).astype(str)):
            out[:, self.classes.index(c)] = raw[:, j]
        return np.asarray(apply_temperature(out, self.temperature))

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Expected score of every expert on every prompt ``[n, E]``."""
        if self.kind == "stack":
            from coserve.router.predict import stack_design

            return np.asarray(self.predictor.predict(stack_design(self.category_proba(X), X)))
        prior = self.category_proba(X) @ self.S if self.classifier is not None else 0.0
        if self.predictor is None:
            return np.asarray(prior)
        return self.alpha * prior + (1 - self.alpha) * np.asarray(self.predictor.predict(X))

    def fallback_mask(self, X: np.ndarray) -> np.ndarray:
        """True for prompts the router is unsure of (low confidence or out of distribution)."""
        mask = np.zeros(len(X), dtype=bool)
        if self.classifier is not None:
            mask |= self.category_proba(X).max(axis=1) < self.min_confidence
        if self.ood is not None:
            mask |= np.asarray(self.ood.score(X)) > self.ood_threshold
        return mask

    def expert_for(self, X: np.ndarray, budget: float | None = None) -> list[str]:
        """The expert for each prompt, at the saved budget or at ``budget`` (same axis)."""
        from coserve.router.mapping import choose_per_prompt, lambda_for_budget, solve_map

        if self.kind.startswith("map-"):
            assignment = np.asarray(self.assignment if budget is None else solve_map(self.p, self.S, self.cost, budget))
            choice = assignment[self.category_proba(X).argmax(axis=1)]
        else:
            scores = self.scores(X)
            lam = self.lam if budget is None else lambda_for_budget(scores, self.cost, budget)
            choice = choose_per_prompt(scores, self.cost, lam)
        choice = np.where(self.fallback_mask(X), self.experts.index(self.fallback_expert), choice)
        return [self.experts[int(e)] for e in choice]

    def solve(self) -> None:
        """Re-solve the category->expert map at the saved budget (map routers)."""
        from coserve.router.mapping import solve_map

        self.assignment = [int(e) for e in solve_map(self.p, self.S, self.cost, self.budget)]

    def save(self, directory: str | Path) -> Path:
        """Write ``manifest.json`` and ``arrays.npz`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "S": self.S,
            "p": self.p,
            "train_ids": self.train_ids.astype(str),
            "train_category": self.train_category,
        }
        parts: dict[str, Any] = {}
        for prefix, model in (("clf", self.classifier), ("pred", self.predictor), ("ood", self.ood)):
            if model is None:
                parts[prefix] = None
                continue
            params, state = model.get_state()
            parts[prefix] = {"name": getattr(model, "name", prefix), "params": params}
            arrays.update({f"{prefix}/{k}": v for k, v in state.items()})
        manifest = {
            "format": TRAINED_FORMAT_VERSION,
            "kind": self.kind,
            "experts": [
                {"name": n, "params_b": _num(b), "price": _num(c)}
                for n, b, c in zip(self.experts, self.params_b, self.price, strict=True)
            ],
            "categories": self.classes,
            "budget": {"axis": self.budget_axis, "value": self.budget},
            "map": {c: self.experts[e] for c, e in zip(self.classes, self.assignment, strict=True)}
            if self.assignment
            else None,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "lam": self.lam,
            "fallback": {
                "expert": self.fallback_expert,
                "min_confidence": self.min_confidence,
                "ood_threshold": _num(self.ood_threshold),
            },
            "classifier": parts["clf"],
            "predictor": parts["pred"],
            "ood": parts["ood"],
            "hyper": self.hyper,
        }
        tmp = directory / "arrays.partial.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        tmp.replace(directory / "arrays.npz")
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return directory


def _num(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _part(spec: dict[str, Any] | None, prefix: str, arrays: dict[str, np.ndarray], registry: Any) -> Any:
    if spec is None:
        return None
    state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    return registry(spec["name"]).from_state(spec["params"], state)


def read_router_directory(directory: Path, what: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A router directory's ``manifest.json`` and ``arrays.npz`` (no pickle); ConfigError saying
    ``what`` the directory is not, when either cannot be read."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{directory}: {what}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{directory}: {what}: manifest.json is not an object")
    return manifest, arrays


def load_trained(directory: str | Path) -> TrainedRouter:
    """Read a router directory written by ``coserve train``."""
    from coserve.router.calibrate import OODScorer
    from coserve.router.classify import CLASSIFIERS
    from coserve.router.predict import PREDICTORS

    directory = Path(directory)
    manifest, arrays = read_router_directory(directory, "not a trained router directory")
    if manifest.get("format") != TRAINED_FORMAT_VERSION:
        raise ConfigError(f"{directory}: router format {manifest.get('format')}, expected {TRAINED_FORMAT_VERSION}")
    experts = [e["name"] for e in manifest["experts"]]
    mapping = manifest["map"] or {}
    fallback = manifest["fallback"]
    return TrainedRouter(
        kind=manifest["kind"],
        experts=experts,
        params_b=np.array([np.nan if e["params_b"] is None else e["params_b"] for e in manifest["experts"]]),
        price=np.array([np.nan if e["price"] is None else e["price"] for e in manifest["experts"]]),
        classes=list(manifest["categories"]),
        S=arrays["S"],
        p=arrays["p"],
        train_ids=arrays["train_ids"],
        train_category=arrays["train_category"],
        budget_axis=manifest["budget"]["axis"],
        budget=float(manifest["budget"]["value"]),
        classifier=_part(manifest["classifier"], "clf", arrays, lambda n: CLASSIFIERS[n]),
        predictor=_part(manifest["predictor"], "pred", arrays, lambda n: PREDICTORS[n]),
        ood=_part(manifest["ood"], "ood", arrays, lambda n: OODScorer),
        temperature=manifest["temperature"],
        alpha=manifest["alpha"],
        lam=manifest["lam"],
        assignment=[experts.index(mapping[c]) for c in manifest["categories"]] if mapping else [],
        fallback_expert=fallback["expert"],
        min_confidence=fallback["min_confidence"],
        ood_threshold=float("inf") if fallback["ood_threshold"] is None else fallback["ood_threshold"],
        hyper=manifest.get("hyper", {}),
    )


def add_expert(
    router: TrainedRouter, name: str, scores: dict[str, float], params_b: float, price: float | None = None
) -> TrainedRouter:
    """Add an expert from its scores on the training prompts (by id) and re-solve the map; no refitting."""
    if not router.kind.startswith("map-"):
        raise ConfigError(f"experts add needs a map router; a {router.kind} router must be retrained")
    if name in router.experts:
        raise ConfigError(f"expert {name!r} is already in the router")
    if not params_b > 0 or not np.isfinite(params_b):
        raise ConfigError(f"--params-b {params_b}: the expert's active parameters must be a positive number")
    if price is not None and (not price >= 0 or not np.isfinite(price)):
        raise ConfigError(f"--price {price}: the expert's price must be 0 or more")
    column = np.array([scores.get(str(i), np.nan) for i in router.train_ids], dtype=float)
    if np.isnan(column).all():
        raise ConfigError(f"no scores of {name!r} match the router's training prompts (by id)")
    overall = float(np.nanmean(column))
    per_category = []
    for k in range(len(router.classes)):
        values = column[router.train_category == k]
        per_category.append(float(np.nanmean(values)) if np.isfinite(values).any() else overall)
    router.S = np.hstack([router.S, np.array(per_category)[:, None]])
    router.experts = [*router.experts, name]
    router.params_b = np.append(router.params_b, params_b)
    router.price = np.append(router.price, np.nan if price is None else price)
    if not np.isfinite(router.cost[-1]):
        raise ConfigError(f"the router's budget is on {router.budget_axis}; give the new expert's {router.budget_axis}")
    try:
        router.solve()
    except InfeasibleConstraints as exc:
        raise ConfigError(f"cannot re-solve the map at the saved budget: {exc.message}") from None
    return router
