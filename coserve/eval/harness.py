"""The evaluation harness: replay outcome data through every router and report quality vs cost.

``evaluate`` pools out-of-fold choices over prompt-grouped folds (each fold's parts are fitted on
its training rows only), or fits on a training set and scores a test set. It reports each router's
operating points on both cost axes (average active parameters, average price) where the experts
file has them, the metrics of ``coserve.eval.metrics``, and the baselines: every single expert,
uniform random routing (its expected value), and the per-prompt oracle (cheapest on ties).
Router kinds are looked up in the classifier and predictor registries at run time. This module
knows nothing about plotting or the command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coserve.bootstrap import RESAMPLES, SEED
from coserve.errors import ConfigError
from coserve.eval import metrics as M
from coserve.eval.data import INNER_FOLDS, ExpertCosts, OutcomeSet, embed_cached, grouped_folds
from coserve.eval.intervals import add_differences, add_intervals, check_reference
from coserve.eval.metrics import json_number
from coserve.eval.sweeps import HYBRID_CLASSIFIER, HYBRID_PREDICTOR, STACK, TOP_K, Axis, Fold, FoldModels, sweep
from coserve.eval.user_router import reads_text

__all__ = ["available_routers", "baselines", "evaluate", "evaluate_grouped", "json_number"]

NO_VECTORS = "none (every router reads the prompts' texts)"  # meta.embedder where nothing was embedded
MAP_BUDGETS = 17  # evenly spaced budgets per axis, added to the Pareto budgets of the whole set


def available_routers(n_categories: int) -> tuple[list[str], dict[str, str]]:
    """Router names that can run now, and why the others cannot."""
    names: list[str] = []
    missing: dict[str, str] = {}
    try:
        import coserve.router.mapping
        from coserve.router.classify import CLASSIFIERS

        if n_categories >= 2:
            names += [f"map-{c}" for c in sorted(CLASSIFIERS)]
            names += [f"map-{HYBRID_CLASSIFIER}+fallback"]
        else:
            missing["map-*"] = "needs at least two categories"
    except ImportError as exc:
        missing["map-*"] = f"module missing: {exc.name}"
    try:
        import coserve.router.mapping  # noqa: F401
        from coserve.router.predict import PREDICTORS

        names += [f"prompt-{p}" for p in sorted(PREDICTORS)]
        if n_categories >= 2 and HYBRID_PREDICTOR in PREDICTORS:
            names += ["hybrid", f"top{TOP_K}", STACK]
    except ImportError as exc:
        missing["prompt-*, hybrid"] = f"module missing: {exc.name}"
    return names, missing


def _axes(costs: ExpertCosts, train: OutcomeSet) -> list[Axis]:
    from coserve.eval.sweeps import category_table
    from coserve.router.mapping import pareto

    classes = sorted(set(train.categories))
    p, S = category_table(list(train.categories), classes, train.scores)
    axes = []
    for name, cost in (("params", costs.params_b), ("price", costs.price)):
        if not np.all(np.isfinite(cost)) or not cost.max() > 0:  # a free expert (0) is a cost; all free is none
            continue
        front = [pt.budget for pt in pareto(p, S, cost)] if len(classes) >= 2 else []
        grid = np.unique(np.round([*np.linspace(cost.min(), cost.max(), MAP_BUDGETS), *front], 6))
        axes.append(Axis(name, np.asarray(cost, float), grid))
    if not axes:
        raise ConfigError("the experts file gives neither params_b nor prices for every expert")
    return axes


def baselines(Y: np.ndarray, experts: Sequence[str], costs: ExpertCosts, primary: np.ndarray) -> dict[str, Any]:
    """Each single expert's quality and cost on ``Y`` [prompts, experts], random's (uniform, expected) and the
    oracle's (the best expert per prompt, the cheapest on ``primary`` among ties)."""
    out: dict[str, Any] = {}
    for e, name in enumerate(experts):
        out[name] = {
            "quality": json_number(np.nanmean(Y[:, e])),
            "avg_params_b": json_number(costs.params_b[e]),
            "avg_price": json_number(costs.price[e]),
        }
    out["random"] = {
        "quality": json_number(np.nanmean(np.nanmean(Y, axis=1))),
        "avg_params_b": json_number(costs.params_b.mean()),
        "avg_price": json_number(costs.price.mean()),
    }
    filled = np.nan_to_num(Y, nan=-1.0)
    best = filled.max(axis=1, keepdims=True)
    # Cheapest on ties: among the best experts of each prompt, the lowest primary cost.
    oracle = np.argmin(np.where(filled == best, primary[None, :], np.inf), axis=1)
    out["oracle"] = {
        "quality": json_number(np.nanmean(best[:, 0])),
        "avg_params_b": json_number(costs.params_b[oracle].mean()),
        "avg_price": json_number(costs.price[oracle].mean()),
    }
    return out


def _points(
    choices: dict[tuple[str, float], np.ndarray], Y: np.ndarray, costs: ExpertCosts, strong: int | None, by_lam: bool
) -> list[dict[str, Any]]:
    """Pooled operating points; a per-prompt router's key is its cost weight ``lam`` and its budget the cost spent."""
    points = []
    for (axis, key), choice in _reached(choices):
        spent = (costs.params_b if axis == "params" else costs.price)[choice].mean()
        point = {
            "axis": axis,
            "budget": json_number(spent if by_lam else key),
            "quality": json_number(np.nanmean(Y[np.arange(len(choice)), choice])),
            "avg_params_b": json_number(costs.params_b[choice].mean()),
            "avg_price": json_number(costs.price[choice].mean()),
        }
        if by_lam:
            point["lam"] = json_number(key)
        if strong is not None:
            point["strong_fraction"] = json_number(float((choice == strong).mean()))
        points.append(point)
    return points


def _reached(choices: dict[tuple[str, float], np.ndarray]) -> list[tuple[tuple[str, float], np.ndarray]]:
    """The operating points every fold could reach (none infeasible at its budget), in the report's order."""
    return [(key, choice) for key, choice in sorted(choices.items()) if not (choice < 0).any()]


def _router_metrics(
    points: list[dict[str, Any]],
    base: dict[str, Any],
    experts: Sequence[str],
    primary: str,
    x_range: dict[str, tuple[float, float]],
    strong: int | None,
) -> dict[str, Any]:
    key = {"params": "avg_params_b", "price": "avg_price"}
    singles = {e: base[e] for e in experts}
    best = max(singles.values(), key=lambda b: b["quality"])
    q_best, q_oracle = best["quality"], base["oracle"]["quality"]
    on = {axis: [p for p in points if p["axis"] == axis] for axis in ("params", "price")}
    fronts = {a: ([p[key[a]] for p in on[a]], [p["quality"] for p in on[a]]) for a in on if a in x_range and on[a]}
    xs, qs = [p[key[primary]] for p in on[primary]], [p["quality"] for p in on[primary]]
    best_cost = best[key[primary]]
    q_at = M.quality_at_budget(xs, qs, best_cost)
    min_budget = M.min_budget_for_quality(xs, qs, q_best)
    two = None
    if strong is not None:
        q_s, q_w = base[experts[strong]]["quality"], base[experts[1 - strong]]["quality"]
        two = ([p["strong_fraction"] for p in points], [p["quality"] for p in points], q_w, q_s)
    figures = {k: json_number(v) for k, v in M.summary(fronts, x_range, q_at, q_best, q_oracle, two).items()}
    out: dict[str, Any] = {k: v for k, v in figures.items() if k.startswith("auc_")}
    out.update(
        cost_axis=primary,
        quality_at_best_single_budget=json_number(q_at),
        min_budget_for_best_single_quality=json_number(min_budget),
        min_budget_ratio_to_best_single=json_number(min_budget / best_cost) if best_cost > 0 else None,
    )
    out.update({k: v for k, v in figures.items() if not k.startswith("auc_")})
    return out


def evaluate(
    train: OutcomeSet,
    test: OutcomeSet | None,
    costs: ExpertCosts,
    folds: int = 5,
    seed: int = 0,
    routers: Sequence[str] | None = None,
    embedder: Any = None,
    cache: Any = None,
    jobs: int = 1,
    user_routers: Mapping[str, str] | None = None,
    intervals: bool = True,
    reference: str | None = None,
    resampled_out: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate routers by grouped cross-validation on ``train`` or on ``test``; returns the report.

    ``jobs`` > 1 runs folds in that many processes; the report is the same as with one.
    ``user_routers`` maps the names in ``routers`` of the user's own routers to their specs
    (coserve.eval.user_router). ``intervals``: each figure's paired bootstrap interval over the evaluated
    prompts (``coserve.eval.intervals``), and each router's paired difference from ``reference`` (None: the
    best-AUC built-in router); with ``resampled_out`` (``evaluate_grouped``'s) the routers' resampled summary
    figures go there and the differences are left to the caller.
    """
    from tqdm import tqdm

    if test is not None and test.experts != train.experts:
        raise ConfigError(f"test experts {test.experts} differ from training experts {train.experts}")
    costs = costs.aligned(train.experts)
    evaluated = test if test is not None else train
    classes = sorted(set(train.categories))
    names, missing = available_routers(len(classes))
    if routers is not None:
        unknown = [r for r in routers if r not in names and r not in (user_routers or {})]
        if unknown:
            raise ConfigError(f"routers not available: {unknown}; available: {names}; missing: {missing}")
        names = list(routers)
    if names and all(reads_text(user_routers or {}, name) for name in names):  # no router reads vectors: none made
        embedder = NO_VECTORS
    elif embedder is None:
        from coserve.router.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    X = _vectors(train.prompts, embedder, cache)
    X_eval = _vectors(test.prompts, embedder, cache) if test is not None else X
    if resampled_out is None:
        check_reference(reference, names, intervals)
    axes = _axes(costs, train)
    primary = axes[0].name
    everything = np.arange(len(train))
    splits = [(everything, np.arange(len(test)))] if test is not None else grouped_folds(train.prompts, folds, seed)
    n_eval, E = len(evaluated), len(train.experts)
    pooled: dict[str, dict[tuple[str, float], np.ndarray]] = {n: {} for n in names}
    posteriors: dict[str, dict[str, Any]] = {}
    extras: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    bar = tqdm(total=len(splits) * len(names), desc="evaluating", unit="router")
    tasks = [(f, tr, te) for f, (tr, te) in enumerate(splits)]
    shared = (X, X_eval, train, evaluated.prompts, classes, axes, primary, names, seed, dict(user_routers or {}))
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
            futures = [pool.submit(_run_fold, task, shared) for task in tasks]
            results = []
            for future in futures:
                results.append(future.result())
                bar.update(len(names))
    else:
        results = [_run_fold(task, shared, bar.update) for task in tasks]
    bar.close()
    for te, choices, fold_extras, fold_posteriors in results:
        for name in names:
            for key, choice in choices[name].items():
                pooled[name].setdefault(key, np.full(n_eval, -1, dtype=int))[te] = choice
            extras[name].append(fold_extras[name])
        for clf, post in fold_posteriors.items():
            slot = posteriors.setdefault(
                clf, {"raw": np.zeros((n_eval, len(classes))), "cal": np.zeros((n_eval, len(classes))), "T": []}
            )
            slot["raw"][te], slot["cal"][te] = post["raw"], post["cal"]
            slot["T"].append(post["T"])

    Y = evaluated.scores
    cost_of = {a.name: a.cost for a in axes}
    base = baselines(Y, train.experts, costs, cost_of[primary])
    strong = int(np.argmax(np.nanmean(Y, axis=0))) if E == 2 else None
    x_range = {a.name: (float(a.cost.min()), float(a.cost.max())) for a in axes}
    y_int = np.array([classes.index(c) if c in classes else -1 for c in evaluated.categories])
    known = y_int >= 0
    report: dict[str, Any] = {}
    resampled: dict[str, Any] = {}
    for name in names:
        points = _points(pooled[name], Y, costs, strong, by_lam=not name.startswith("map-"))
        entry: dict[str, Any] = {
            "points": points,
            "metrics": _router_metrics(points, base, train.experts, primary, x_range, strong),
        }
        if intervals:
            reached = [choice for _, choice in _reached(pooled[name])]
            resampled[name] = add_intervals(points, reached, entry["metrics"], Y, costs, base, train.experts, primary)
        clf = _classifier_of(name)
        if clf is not None:
            post = posteriors[clf]
            predicted = [classes[i] for i in post["cal"].argmax(axis=1)]
            entry["metrics"].update(
                category_accuracy=json_number(M.category_accuracy(predicted, list(evaluated.categories))),
                ece=json_number(M.ece(post["raw"][known], y_int[known])),
                ece_calibrated=json_number(M.ece(post["cal"][known], y_int[known])),
                temperature=[json_number(t) for t in post["T"]],
            )
        entry["metrics"].update(_fold_extras(extras[name]))
        report[name] = entry
    meta: dict[str, Any] = {
        "n_train": len(train),
        "n_eval": n_eval,
        "experts": list(train.experts),
        "categories": classes,
        "mode": "test" if test is not None else "cv",
        "folds": len(splits),
        "seed": seed,
        "embedder": embedder if embedder == NO_VECTORS else getattr(embedder, "name", "?"),
        "cost_axes": [a.name for a in axes],
        "primary_axis": primary,
        "strong_expert": train.experts[strong] if strong is not None else None,
        "hybrid": {"classifier": HYBRID_CLASSIFIER, "predictor": HYBRID_PREDICTOR, "top_k": TOP_K},
        "not_run": missing,
        "intervals": {"resamples": RESAMPLES, "seed": SEED, "level": 0.95} if intervals else None,
    }
    out = {"routers": report, "baselines": base, "meta": meta}
    if intervals and resampled_out is not None:
        resampled_out.update(resampled)
    elif intervals:
        add_differences(out, resampled, reference, user_routers or {})
    return out


def evaluate_grouped(
    train: OutcomeSet,
    test: OutcomeSet | None,
    costs: ExpertCosts,
    groups: Mapping[str, tuple[Any, Sequence[str]]],
    reference: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``evaluate`` once per embedder, each on its own routers, merged into one report.

    ``groups`` maps an embedder's name to (the embedder, its routers). The folds, inner splits and
    baselines depend on the prompts and scores only, so every group is scored on the same rows and
    the merged report compares the routers as one run would; ``meta.embedders`` says which vectors
    each router read; the differences from ``reference`` are taken over all groups' routers.
    """
    check_reference(reference, [r for _, rs in groups.values() for r in rs], options.get("intervals", True))
    resampled: dict[str, Any] = {}
    reports = [
        (name, evaluate(train, test, costs, routers=list(rs), embedder=e, resampled_out=resampled, **options))
        for name, (e, rs) in groups.items()
    ]
    if not reports:
        raise ConfigError("no router to evaluate")
    merged = reports[0][1]
    merged["meta"]["embedders"] = {}
    for name, report in reports:
        merged["routers"].update(report["routers"])
        merged["meta"]["embedders"].update(dict.fromkeys(report["routers"], name))
    merged["meta"]["embedder"] = reports[0][0] if len(reports) == 1 else "per router (meta.embedders)"
    if options.get("intervals", True):
        add_differences(merged, resampled, reference, options.get("user_routers") or {})
    return merged


def _vectors(prompts: Sequence[str], embedder: Any, cache: Any) -> np.ndarray:
    """The prompts' vectors, or none (zero columns) where no router reads them."""
    return np.zeros((len(prompts), 0), np.float32) if embedder == NO_VECTORS else embed_cached(prompts, embedder, cache)


def _classifier_of(name: str) -> str | None:
    return name.removeprefix("map-").removesuffix("+fallback") if name.startswith("map-") else None


def _run_fold(task: tuple[int, np.ndarray, np.ndarray], shared: tuple[Any, ...], progress: Any = None) -> tuple:
    """Fit and sweep every router on one fold: (held-out rows, choices, extras, posteriors) by router."""
    f, tr, te = task
    X, X_eval, train, prompts_eval, classes, axes, primary, names, seed, users = shared
    texts = [train.prompts[i] for i in tr]
    inner, val = grouped_folds(texts, INNER_FOLDS, seed + f)[0]
    cats = [train.categories[i] for i in tr]
    fold = Fold(X[tr], cats, train.scores[tr], X_eval[te], inner, val, classes, axes, seed + f, primary)
    fold.user_routers, fold.texts, fold.texts_test = users, texts, [prompts_eval[i] for i in te]
    models = FoldModels(fold)
    choices, extras, posteriors = {}, {}, {}
    for name in names:
        models.f.extras = {}
        choices[name] = sweep(name, models)
        extras[name] = dict(models.f.extras)
        clf = _classifier_of(name)
        if clf is not None:
            post = models.posterior(clf)
            posteriors[clf] = {"raw": post["raw"], "cal": post["cal"], "T": post["T"]}
        if progress is not None:
            progress()
    return te, choices, extras, posteriors


def _fold_extras(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-fold tuned values (alpha, thresholds, fallback rate) as lists, one entry a fold."""
    keys = sorted({k for d in per_fold for k in d})
    return {k: [json_number(d[k]) if k in d else None for d in per_fold] for k in keys}
