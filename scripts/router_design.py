"""Session 9 router design study on llmrouter: DESIGN/CONFIRM split, candidates by grouped CV.

The training file is split ONCE by prompt group (``grouped_folds(prompts, 5, SPLIT_SEED)``, fold
``CONFIRM_FOLD`` is CONFIRM, 20%; the rest is DESIGN, 80%). ``--stage design`` scores every
candidate by grouped 5-fold CV on DESIGN only (each fold with an inner 80/20 grouped split for
the weights, temperature and ``lam``, as ``coserve eval`` does). ``--stage confirm --candidates
a,b`` fits on all of DESIGN and scores CONFIRM once. Per candidate: quality at <= 10.2 B and
<= 51 B on the pooled front (mixing lam points, as docs/eval.md reports) and with ``lam`` set per
budget on the inner split (what ``coserve train`` deploys), and the best single expert beside it.
Not part of the package: a research script; the figures are in docs/data/router-{design,confirm}-s9-*.json,
printed as a table by ``scripts/router_design.py --table FILE...``. Run it with the repository root
on ``PYTHONPATH`` so the checked-out package is the one imported.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval.data import OutcomeSet, embed_cached, grouped_folds, load_costs, load_outcomes
from coserve.eval.metrics import normalised_auc, quality_at_budget
from coserve.eval.sweeps import HYBRID_CLASSIFIER, LAMBDAS, Axis, Fold, FoldModels, hybrid_scores
from coserve.router.embedders import STACK_EMBEDDER, make_embedder
from coserve.router.mapping import choose_per_prompt, lambda_for_budget

SPLIT_SEED = 9
CONFIRM_FOLD = 0
BUDGETS = (10.2, 51.0)
BLEND_WEIGHTS = (0.5, 0.625, 0.75, 0.875, 1.0)  # weight of the stack in a score-level blend

VARIANTS: list[str] = []  # "stack-v:..." names asked on the command line
NAMED = (  # the candidates' fixed names (``candidates``' keys), checked before any embedding
    "stack", "hybrid", "stack+knn", "hgb", "stack+hgb", "stack+iso", "stack-oof", "stack-cross1", "stack-cross3",
    "stack-a30", "stack-a300", "stack-s3", "stack-s30",
)  # fmt: skip
VARIANT_OPTIONS = ("scale", "alpha", "cross", "oof")  # what a "stack-v:OPTION=NUMBER,..." name may set

Scores = tuple[np.ndarray, np.ndarray | None]  # expected scores on held-out rows, on inner-validation rows


# -- extra cheap features (candidate "xf") ---------------------------------------------------------------
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_FEWSHOT = re.compile(r"^(?:Q|A|Question|Answer)\s*:", re.MULTILINE | re.IGNORECASE)
_MATH_WORDS = re.compile(r"\b(?:how many|how much|calculate|compute|solve|prove|total|percent|sum of)\b", re.I)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")


def extra_features(texts: Sequence[str]) -> np.ndarray:
    """Nine more order-one features: numbers, few-shot markers, maths words, sentences, line width,
    question marks, non-ASCII and upper-case shares, answer-format instructions."""
    rows = []
    for t in texts:
        chars = max(1, len(t))
        lines = t.split("\n") or [""]
        rows.append(
            [
                np.log1p(len(_NUMBER.findall(t))) / 3.0,
                np.log1p(len(_FEWSHOT.findall(t))) / 2.0,
                float(bool(_MATH_WORDS.search(t))),
                np.log1p(len(_SENTENCE.findall(t))) / 3.0,
                np.log1p(max(len(line) for line in lines)) / 6.0,
                np.log1p(t.count("?")) / 2.0,
                5.0 * sum(ord(c) > 127 for c in t) / chars,
                5.0 * sum(c.isupper() for c in t) / chars,
                float("answer" in t[-200:].lower()),
            ]
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), 9)


# -- candidates --------------------------------------------------------------------------------------------
def _val_auc(m: FoldModels, val_scores: np.ndarray) -> float:
    """Normalised AUC of the lam sweep of ``val_scores`` on the inner validation rows (params axis)."""
    axis = m.f.axes[0]
    Y_val = m.f.Y[m.f.val]
    scaled = axis.cost / axis.cost.max()
    xs, qs = [], []
    for lam in LAMBDAS:
        c = choose_per_prompt(val_scores, scaled, float(lam))
        xs.append(float(axis.cost[c].mean()))
        qs.append(float(np.nanmean(Y_val[np.arange(len(c)), c])))
    oracle = float(np.nanmean(np.nanmax(Y_val, 1)))
    return normalised_auc(xs, qs, float(axis.cost.min()), float(axis.cost.max()), oracle)


def _blend(m: FoldModels, a: Scores, b: Scores, key: str) -> Scores:
    """``w * a + (1 - w) * b``, ``w`` from BLEND_WEIGHTS by the inner-validation AUC."""
    w = max(BLEND_WEIGHTS, key=lambda w: (_val_auc(m, w * a[1] + (1 - w) * b[1]), w))
    m.f.extras.setdefault(key, []).append(w)
    return w * a[0] + (1 - w) * b[0], w * a[1] + (1 - w) * b[1]


def _hgb(m: FoldModels, compact: np.ndarray, compact_test: np.ndarray) -> Scores:
    """Gradient-boosted trees per expert on ``[category one-hot (posterior when applied), compact]``."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    f = m.f
    post = m.posterior(HYBRID_CLASSIFIER)
    onehot = np.eye(len(f.classes))[[f.classes.index(c) for c in f.categories]]
    train = np.hstack([onehot, compact])

    def fit_predict(rows: np.ndarray, design: np.ndarray) -> np.ndarray:
        out = np.zeros((len(design), f.Y.shape[1]))
        for e in range(f.Y.shape[1]):
            y = f.Y[rows, e]
            seen = ~np.isnan(y)
            model = HistGradientBoostingRegressor(
                max_iter=150,
                learning_rate=0.05,
                max_leaf_nodes=15,
                min_samples_leaf=40,
                l2_regularization=1.0,
                early_stopping=False,
                random_state=f.seed,
            )
            out[:, e] = model.fit(train[rows][seen], y[seen]).predict(design)
        return np.clip(out, 0.0, 1.0)

    test = fit_predict(np.arange(len(f.Y)), np.hstack([post["cal"], compact_test]))
    val = fit_predict(f.inner, np.hstack([post["val"], compact[f.val]]))
    return test, val


def _isotonic(m: FoldModels, s: Scores) -> Scores:
    """Per-expert isotonic map from predicted to observed score, fitted on the inner validation rows."""
    from sklearn.isotonic import IsotonicRegression

    test, val = s[0].copy(), s[1].copy()
    Y_val = m.f.Y[m.f.val]
    for e in range(test.shape[1]):
        seen = ~np.isnan(Y_val[:, e])
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s[1][seen, e], Y_val[seen, e])
        test[:, e], val[:, e] = iso.predict(s[0][:, e]), iso.predict(s[1][:, e])
    return test, val


def _oof_posterior(m: FoldModels, rows: np.ndarray) -> np.ndarray:
    """Calibrated category posterior of ``rows`` (training indices), each from a classifier fitted on
    the other 4 of 5 grouped parts of ``rows`` (cross-fitted), with the fold's temperature."""
    from coserve.eval.sweeps import _aligned, _seeded
    from coserve.router.calibrate import apply_temperature
    from coserve.router.classify import make_classifier

    f = m.f
    T = m.posterior(HYBRID_CLASSIFIER)["T"]
    out = np.zeros((len(rows), len(f.classes)))
    prompts = [str(i) for i in rows]  # rows are distinct prompts' indices: group by index
    for fit_part, held in grouped_folds(prompts, 5, f.seed):
        model = _seeded(make_classifier, HYBRID_CLASSIFIER, f.seed).fit(
            f.X[rows[fit_part]], [f.categories[i] for i in rows[fit_part]]
        )
        out[held] = _aligned(model.predict_proba(f.X[rows[held]]), model.classes_, f.classes)
    return np.asarray(apply_temperature(out, T))


def _stack_variant(
    m: FoldModels, n_vec: int, scale: float = 10.0, alpha: float = 100.0, cross: float = 0.0, oof: bool = False
) -> Scores:
    """The stack with other constants: ``cross`` > 0 adds posterior x feature interactions (that
    weight), ``oof`` trains on cross-fitted posteriors instead of the true one-hot."""
    from coserve.router.predict import RidgeRegressor

    f = m.f
    post = m.posterior(HYBRID_CLASSIFIER)

    def design(P: np.ndarray, X: np.ndarray) -> np.ndarray:
        parts = [scale * P, X]
        if cross:
            feats = X[:, n_vec:]
            parts.append(cross * (P[:, :, None] * feats[:, None, :]).reshape(len(X), -1))
        return np.hstack(parts).astype(np.float32)

    everything = np.arange(len(f.Y))
    onehot = np.eye(len(f.classes))[[f.classes.index(c) for c in f.categories]]
    P_all = _oof_posterior(m, everything) if oof else onehot
    P_inner = _oof_posterior(m, f.inner) if oof else onehot[f.inner]
    full = RidgeRegressor(alpha).fit(design(P_all, f.X), f.Y)
    inner = RidgeRegressor(alpha).fit(design(P_inner, f.X[f.inner]), f.Y[f.inner])
    return full.predict(design(post["cal"], f.X_test)), inner.predict(design(post["val"], f.X[f.val]))


def candidates(m: FoldModels, n_vec: int, pca: np.ndarray) -> dict[str, Callable[[], Scores]]:
    """Each candidate's scores, computed on demand (``n_vec``: columns of the embedder's unit vector)."""
    f = m.f
    compact = np.hstack([f.X[:, n_vec:], f.X[:, :n_vec] @ pca])
    compact_test = np.hstack([f.X_test[:, n_vec:], f.X_test[:, :n_vec] @ pca])
    knn = lambda: m.predicted("knn")  # noqa: E731
    hgb_cache: dict[str, Scores] = {}

    def hgb() -> Scores:
        if "s" not in hgb_cache:
            hgb_cache["s"] = _hgb(m, compact, compact_test)
        return hgb_cache["s"]

    def variant(spec: str) -> Callable[[], Scores]:
        """``stack-v:cross=3,oof=1,alpha=100,scale=10`` -> that stack variant."""
        opts = {k: float(v) for k, v in (item.split("=") for item in spec.split(",") if item)}
        oof = bool(opts.pop("oof", 0))
        return lambda: _stack_variant(m, n_vec, oof=oof, **opts)

    return {
        **{name: variant(name.removeprefix("stack-v:")) for name in VARIANTS},
        "stack": m.stacked,
        "hybrid": lambda: (hybrid_scores(m), None),  # the old router, front only
        "stack+knn": lambda: _blend(m, m.stacked(), knn(), "w_knn"),
        "hgb": hgb,
        "stack+hgb": lambda: _blend(m, m.stacked(), hgb(), "w_hgb"),
        "stack+iso": lambda: _isotonic(m, m.stacked()),
        "stack-oof": lambda: _stack_variant(m, n_vec, oof=True),
        "stack-cross1": lambda: _stack_variant(m, n_vec, cross=1.0),
        "stack-cross3": lambda: _stack_variant(m, n_vec, cross=3.0),
        "stack-a30": lambda: _stack_variant(m, n_vec, alpha=30.0),
        "stack-a300": lambda: _stack_variant(m, n_vec, alpha=300.0),
        "stack-s3": lambda: _stack_variant(m, n_vec, scale=3.0),
        "stack-s30": lambda: _stack_variant(m, n_vec, scale=30.0),
    }


def unknown_candidates(names: Sequence[str], named: Sequence[str] = NAMED, pattern: str | None = None) -> list[str]:
    """The ``names`` that are not a candidate: not in ``named``, not a well-formed ``stack-v:`` variant,
    and not matching ``pattern`` (a caller's own family of names)."""

    def variant(spec: str) -> bool:
        items = [item.split("=") for item in spec.split(",") if item]
        try:
            return all(len(kv) == 2 and kv[0] in VARIANT_OPTIONS and float(kv[1]) is not None for kv in items)
        except ValueError:  # a value that is not a number
            return False

    def known(name: str) -> bool:
        if name.startswith("stack-v:"):
            return variant(name.removeprefix("stack-v:"))
        return name in named or (pattern is not None and re.fullmatch(pattern, name) is not None)

    return [name for name in names if not known(name)]


def candidate_names(text: str) -> list[str]:
    """``--candidates``' names (comma-separated; semicolon-separated where a name holds a comma)."""
    return text.split(";") if ";" in text else text.split(",")


# -- scoring ------------------------------------------------------------------------------------------------
def _sweep(scores: np.ndarray, cost: np.ndarray) -> dict[float, np.ndarray]:
    scaled = cost / cost.max()
    return {float(lam): choose_per_prompt(scores, scaled, float(lam)) for lam in LAMBDAS}


def by_category(Y: np.ndarray, choice: np.ndarray, cost: np.ndarray, categories: Sequence[str]) -> dict[str, object]:
    """Per category: rows, the router's quality and mean parameters with ``choice``, and each expert's
    quality (where the router's margin over a single expert comes from)."""
    cats = np.asarray(categories)
    out: dict[str, object] = {}
    for k in sorted(set(categories)):
        rows = np.flatnonzero(cats == k)
        out[k] = {
            "n": len(rows),
            "router": round(float(np.nanmean(Y[rows, choice[rows]])), 4),
            "router_params_b": round(float(cost[choice[rows]].mean()), 2),
            "experts": [round(float(x), 4) for x in np.nanmean(Y[rows], axis=0)],
        }
    return out


Pooled = dict[str, dict[object, np.ndarray]]  # candidate -> lam (or ("inner", budget)) -> expert per row
Factory = Callable[[FoldModels, int, np.ndarray], dict[str, Callable[[], Scores]]]
LamRule = Callable[[FoldModels, str, np.ndarray, float], float]  # fold, candidate, val scores, budget -> lam


def pooled_choices(
    X: np.ndarray,
    data: OutcomeSet,
    splits: list[tuple[np.ndarray, np.ndarray]],
    cost: np.ndarray,
    names: Sequence[str],
    n_vec: int,
    seed: int,
    factory: Factory | None = None,
    lam_rule: LamRule | None = None,
) -> tuple[Pooled, dict[str, list[float]]]:
    """Each candidate's out-of-fold choice for every row at every lam, and with lam set per budget on
    the inner split (``factory`` builds the candidates of a fold, default ``candidates``; ``lam_rule``
    sets that lam from the candidate's name and inner-validation scores, default ``lambda_for_budget``)."""
    n = len(data)
    classes = sorted(set(data.categories))
    pooled: Pooled = {c: {} for c in names}
    extras: dict[str, list[float]] = {}
    for f, (tr, te) in enumerate(splits):
        inner, val = grouped_folds([data.prompts[i] for i in tr], 5, seed + f)[0]
        axis = Axis("params", cost, np.zeros(0))
        fold = Fold(
            X[tr], [data.categories[i] for i in tr], data.scores[tr], X[te], inner, val, classes, [axis], seed + f
        )
        m = FoldModels(fold)
        # PCA of the training part's vectors (16 directions) for the tree model's compact input
        Xv = X[tr][:, :n_vec]
        pca = np.linalg.svd(Xv - Xv.mean(0), full_matrices=False)[2][:16].T
        cands = (factory or candidates)(m, n_vec, pca)
        for name in names:
            test, val_scores = cands[name]()
            for lam, choice in _sweep(test, cost).items():
                pooled[name].setdefault(lam, np.full(n, -1))[te] = choice
            for budget in BUDGETS if val_scores is not None else ():
                if lam_rule is None:
                    lam = lambda_for_budget(val_scores, cost, budget)
                else:
                    lam = lam_rule(m, name, val_scores, budget)
                pooled[name].setdefault(("inner", budget), np.full(n, -1))[te] = choose_per_prompt(test, cost, lam)
        for key, value in fold.extras.items():
            if isinstance(value, list):
                extras.setdefault(key, []).extend(value)
        print(f"fold {f} done", file=sys.stderr, flush=True)
    return pooled, extras


def run_folds(
    X: np.ndarray,
    data: OutcomeSet,
    splits: list[tuple[np.ndarray, np.ndarray]],
    cost: np.ndarray,
    names: Sequence[str],
    n_vec: int,
    seed: int,
) -> dict[str, dict[str, object]]:
    """Pooled out-of-fold choices per candidate: every lam point, and lam set per budget on the inner split."""
    pooled, extras = pooled_choices(X, data, splits, cost, names, n_vec, seed)
    rows = np.concatenate([te for _, te in splits])  # the scored rows (all of them in CV)
    Y = data.scores[rows]
    n = len(rows)
    out: dict[str, dict[str, object]] = {}
    for name in names:
        xs, qs = [], []
        for key, c in pooled[name].items():
            if isinstance(key, float):
                c = c[rows]
                xs.append(float(cost[c].mean()))
                qs.append(float(np.nanmean(Y[np.arange(n), c])))
        row: dict[str, object] = {f"front_at_{b:g}": round(quality_at_budget(xs, qs, b), 4) for b in BUDGETS}
        row["auc_params"] = round(
            normalised_auc(xs, qs, float(cost.min()), float(cost.max()), float(np.nanmean(np.nanmax(Y, 1)))), 4
        )
        for b in BUDGETS if ("inner", BUDGETS[0]) in pooled[name] else ():
            c = pooled[name][("inner", b)][rows]
            row[f"inner_lam_at_{b:g}"] = {
                "quality": round(float(np.nanmean(Y[np.arange(n), c])), 4),
                "avg_params_b": round(float(cost[c].mean()), 2),
            }
            row[f"by_category_at_{b:g}"] = by_category(Y, c, cost, [data.categories[i] for i in rows])
        out[name] = row
    out["_extras"] = {k: [float(x) for x in v] for k, v in extras.items()}
    return out


def baselines(data: OutcomeSet, cost: np.ndarray) -> dict[str, object]:
    means = np.nanmean(data.scores, axis=0)
    out: dict[str, object] = {}
    for b in BUDGETS:
        ok = np.flatnonzero(cost <= b)
        e = int(ok[np.argmax(means[ok])])
        out[f"best_single_at_{b:g}"] = {"expert": data.experts[e], "quality": round(float(means[e]), 4)}
    out["oracle"] = round(float(np.nanmean(np.nanmax(data.scores, axis=1))), 4)
    return out


def print_table(paths: Sequence[str]) -> None:
    """One markdown row per candidate of each report: front and inner-lam quality at both budgets."""
    import json

    print(
        "| file | embedder | candidate | front @ 10.2 B | front @ 51 B "
        "| inner lam @ 10.2 B (spent) | inner lam @ 51 B (spent) |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        report = json.loads(Path(path).read_text())
        for name, row in report["candidates"].items():
            if name.startswith("_"):
                continue
            inner = [row.get(f"inner_lam_at_{b:g}") for b in BUDGETS]
            cells = ["-" if x is None else f"{x['quality']:.4f} ({x['avg_params_b']:.2f} B)" for x in inner]
            print(
                f"| {Path(path).stem} | {report['embedder']} | {name} | {row['front_at_10.2']:.4f} | "
                f"{row['front_at_51']:.4f} | {cells[0]} | {cells[1]} |"
            )
        base = report["baselines"]
        print(
            f"| {Path(path).stem} | | best single | {base['best_single_at_10.2']['quality']:.4f} | "
            f"{base['best_single_at_51']['quality']:.4f} | | |"
        )


def load(data_path: str, experts_path: str, extra: bool) -> tuple[OutcomeSet, np.ndarray, np.ndarray, int]:
    """The outcomes, each expert's parameters (B), the stack embedder's cached vectors (with
    ``extra_features`` appended when ``extra``) and the width of the embedder's unit vector."""
    data, problems = load_outcomes(data_path)
    if problems:
        raise SystemExit(f"{len(problems)} bad rows in {data_path}: {problems[:3]}")
    cost = load_costs(experts_path).aligned(data.experts).params_b
    embedder = make_embedder(STACK_EMBEDDER)
    X = embed_cached(data.prompts, embedder)
    if extra:
        X = np.hstack([X, extra_features(data.prompts)])
    return data, cost, X, int(embedder.base.dim)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--table":
        print_table(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--experts", required=True)
    p.add_argument("--stage", choices=("design", "confirm"), required=True)
    p.add_argument("--candidates", default="stack,hybrid,stack+knn,hgb,stack+hgb,stack+iso")
    p.add_argument("--extra-features", action="store_true", help="append extra_features() to the vectors")
    p.add_argument("--cv-seed", type=int, default=0, help="seed of the 5 grouped folds on DESIGN")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    names = candidate_names(args.candidates)
    unknown = unknown_candidates(names)
    if unknown:  # before loading and embedding, not in the first fold
        p.error(f"--candidates: unknown {', '.join(unknown)}; known: {', '.join(NAMED)}, stack-v:OPTION=N,...")
    data, cost, X, n_vec = load(args.data, args.experts, args.extra_features)
    design_idx, confirm_idx = grouped_folds(data.prompts, 5, SPLIT_SEED)[CONFIRM_FOLD]
    VARIANTS.extend(n for n in names if n.startswith("stack-v:"))
    design = data.subset(design_idx)
    if args.stage == "design":
        splits = grouped_folds(design.prompts, 5, args.cv_seed)
        result = run_folds(X[design_idx], design, splits, cost, names, n_vec, args.cv_seed)
        scored = design
    else:
        both = data.subset(np.concatenate([design_idx, confirm_idx]))
        k = len(design_idx)
        splits = [(np.arange(k), np.arange(k, len(both)))]
        result = run_folds(X[np.concatenate([design_idx, confirm_idx])], both, splits, cost, names, n_vec, 0)
        scored = data.subset(confirm_idx)  # the scores of the held-out rows
    payload = {
        "stage": args.stage,
        "cv_seed": args.cv_seed if args.stage == "design" else None,
        "split": {
            "seed": SPLIT_SEED,
            "confirm_fold": CONFIRM_FOLD,
            "n_design": len(design_idx),
            "n_confirm": len(confirm_idx),
        },
        "embedder": STACK_EMBEDDER + ("+extra_features" if args.extra_features else ""),
        "budgets_b": list(BUDGETS),
        "experts": list(data.experts),
        "params_b": [float(x) for x in cost],
        "candidates": result,
        "baselines": baselines(scored, cost),
        "note": "front_at_B: pooled Pareto front of the lam sweep, interpolated (mixes two lam points); "
        "inner_lam_at_B: lam set per fold on the inner split by lambda_for_budget (deployable).",
    }
    command = ["scripts/router_design.py", *(argv if argv is not None else sys.argv[1:])]
    write_data(Path(args.out), payload, ".venv/bin/python " + " ".join(command))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    run_script(main)
