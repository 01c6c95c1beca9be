"""Session 11 router study on llmrouter: each candidate's margin over the best single expert when the
category mix of the scored rows shifts (issue 16's held-out gap), on session 9's DESIGN/CONFIRM split.

``--stage design`` pools each candidate's out-of-fold choices over grouped 5-fold CV on DESIGN
(``router_design.pooled_choices``: every ``lam`` point, and ``lam`` set per budget on the inner
split); ``--stage confirm`` fits on all of DESIGN and scores CONFIRM once. The scored rows are then
re-weighted (``coserve.eval.shift``) to: their own mix (plain); tilts of the DESIGN mix that weigh up
the categories where the 51 B expert beat the default router in session 9 (``ADVERSE``, x2 and x4)
or the categories that are hard for it (``HARD``, x2); and seeded Dirichlet draws around the DESIGN
mix (``DIRICHLET``). The same mixes serve both stages. Per mix and budget (10.2 B, 51 B): the
router's quality on its re-weighted front, its margin over the best single expert within 51 B (the
reference of issue 16's targets) and within the same budget, each chosen again per mix; and the
deployed reading (``lam`` set on the inner split), whose spend drifts with the mix. Over the
Dirichlet draws: mean, 10th percentile and worst, and the paired difference from ``stack``.
Candidates beyond router_design's: category-balanced training weights (``stack-bal*``) and a blend
toward the category table for prompts whose category is uncertain (``stack+table``).
Not part of the package: a research script (run it with the repository root on ``PYTHONPATH``);
figures in docs/data/router-shift-s11-*.json, printed by ``scripts/router_shift.py --table FILE...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval import shift
from coserve.eval.data import grouped_folds
from coserve.eval.sweeps import HYBRID_CLASSIFIER, FoldModels

BUDGETS = (10.2, 51.0)
EXPLAIN_FACTORS = (1.25, 1.5, 2.0, 4.0)  # how far (x or /) each category's share may move in --explain
SAMPLE_ROWS = 500  # the held-out set's size (issue 16), for the standard error of a margin on it
OVER = 1.05  # a deployed lam "over budget" at a mix: spend above 105% of the budget
REFERENCE_B = 51.0  # issue 16's targets are set against the best single expert within 51 B
# Session 9 (docs/data/router-design-s9-categories.json, DESIGN CV): the 51 B expert beat the default
# router at <= 10.2 B on these; and these are the ones where it scores below its own DESIGN mean.
ADVERSE = ("arc_challenge", "commongen", "gpqa", "gsm8k", "mbpp", "mmlu", "openbook_qa")
HARD = ("agentverse-logicgrid", "gpqa", "math", "natural_qa", "trivia_qa")
TILTS = (("adverse x2", ADVERSE, 2.0), ("adverse x4", ADVERSE, 4.0), ("hard x2", HARD, 2.0))
DIRICHLET = (("dirichlet c50", 50.0, 200, 11), ("dirichlet c10", 10.0, 200, 12))  # name, concentration, n, seed
PER_DRAW = ("front_at_10.2", "front_at_51")  # kept per Dirichlet draw, for pairing across files
TABLE_THRESHOLDS = (0.0, 0.5, 0.7, 0.9)  # below this top posterior, blend halfway toward the table (0: never)

Scores = tuple[np.ndarray, np.ndarray | None]


def _design_module() -> ModuleType:
    path = Path(__file__).resolve().parent / "router_design.py"
    spec = importlib.util.spec_from_file_location("router_design", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RD = _design_module()


# -- candidates ------------------------------------------------------------------------------------------
def balance_weights(categories: Sequence[str], power: float) -> np.ndarray:
    """Row weights ``n_k ** -power`` (``n_k`` rows of the row's category), scaled to mean 1: 0 leaves
    the mix as it is, 1 gives every category the same total weight."""
    _, index, counts = np.unique(np.asarray(categories, dtype=str), return_inverse=True, return_counts=True)
    w = counts[index].astype(float) ** -power
    return w * len(w) / w.sum()


def weighted_ridge(X: np.ndarray, Y: np.ndarray, w: np.ndarray, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    """RidgeRegressor's fit (missing cells filled with the expert's mean, intercept unpenalised) with
    row weights ``w``; returns the clipped predictor. ``w`` all ones is RidgeRegressor itself."""
    X = np.asarray(X, dtype=np.float64)
    seen = ~np.isnan(Y)
    filled = np.where(seen, Y, np.where(seen, Y, 0.0).sum(0) / seen.sum(0))
    x_mean, y_mean = w @ X / w.sum(), w @ filled / w.sum()
    Xc = X - x_mean
    coef = np.linalg.solve(
        Xc.T @ (Xc * w[:, None]) + alpha * np.eye(X.shape[1]), (Xc * w[:, None]).T @ (filled - y_mean)
    )
    intercept = y_mean - x_mean @ coef
    return lambda Z: np.clip(np.asarray(Z, np.float64) @ coef + intercept, 0.0, 1.0)


def _posterior(m: FoldModels, power: float) -> dict[str, np.ndarray]:
    """Calibrated posteriors (held-out ``cal``, inner-validation ``val``) of a logistic classifier
    fitted with class weights ``n_k ** -power``; power 0 is the fold's own classifier."""
    if power == 0:
        return m.posterior(HYBRID_CLASSIFIER)
    key = f"post-bal{power:g}"
    if key not in m.f.extras:
        from sklearn.linear_model import LogisticRegression

        from coserve.eval.sweeps import _aligned
        from coserve.router.calibrate import apply_temperature, fit_temperature

        f = m.f

        def fit(rows: np.ndarray) -> LogisticRegression:
            labels = np.asarray(f.categories)[rows]
            names, counts = np.unique(labels, return_counts=True)
            weights = {str(k): float(c) ** -power for k, c in zip(names, counts, strict=True)}
            return LogisticRegression(C=10.0, max_iter=2000, class_weight=weights).fit(f.X[rows], labels)

        inner = fit(f.inner)
        val_raw = _aligned(inner.predict_proba(f.X[f.val]), inner.classes_, f.classes)
        T = float(fit_temperature(val_raw, np.array([f.classes.index(f.categories[i]) for i in f.val])))
        full = fit(np.arange(len(f.Y)))
        raw = _aligned(full.predict_proba(f.X_test), full.classes_, f.classes)
        m.f.extras[key] = {"cal": apply_temperature(raw, T), "val": apply_temperature(val_raw, T)}
    return dict(m.f.extras[key])


def balanced_stack(m: FoldModels, ridge_power: float, clf_power: float) -> Scores:
    """The stack with its ridge fitted under ``balance_weights(ridge_power)`` and its posterior from
    a classifier fitted with class weights of ``clf_power``."""
    from coserve.router.predict import STACK_RIDGE_ALPHA, stack_design

    f = m.f
    post = _posterior(m, clf_power)
    onehot = np.eye(len(f.classes))[[f.classes.index(c) for c in f.categories]]
    cats = np.asarray(f.categories)
    full = weighted_ridge(stack_design(onehot, f.X), f.Y, balance_weights(cats, ridge_power), STACK_RIDGE_ALPHA)
    inner = weighted_ridge(
        stack_design(onehot[f.inner], f.X[f.inner]),
        f.Y[f.inner],
        balance_weights(cats[f.inner], ridge_power),
        STACK_RIDGE_ALPHA,
    )
    return full(stack_design(post["cal"], f.X_test)), inner(stack_design(post["val"], f.X[f.val]))


def stack_toward_table(m: FoldModels) -> Scores:
    """Where the top category probability is below a threshold, the stack's scores averaged with the
    category table's (posterior @ per-category means); the threshold from TABLE_THRESHOLDS by the
    inner-validation AUC."""
    test, val = m.stacked()
    post = m.posterior(HYBRID_CLASSIFIER)
    table_test, table_val = post["cal"] @ m.table[1], post["val"] @ m.inner_table[1]

    def blend(s: np.ndarray, table: np.ndarray, P: np.ndarray, t: float) -> np.ndarray:
        return np.where(P.max(1, keepdims=True) < t, 0.5 * (s + table), s)

    t = max(TABLE_THRESHOLDS, key=lambda t: (RD._val_auc(m, blend(val, table_val, post["val"], t)), -t))
    m.f.extras.setdefault("table_threshold", []).append(t)
    return blend(test, table_test, post["cal"], t), blend(val, table_val, post["val"], t)


def cross_pca_stack(m: FoldModels, n_vec: int, directions: int, cross: float) -> Scores:
    """The stack with posterior x [prompt features, the vector's first ``directions`` principal
    directions on the training part] interactions, weight ``cross``: each category weighs the features
    and the vector's main directions its own way."""
    from coserve.router.predict import STACK_POSTERIOR_SCALE, STACK_RIDGE_ALPHA, RidgeRegressor

    f = m.f
    post = m.posterior(HYBRID_CLASSIFIER)
    vectors = f.X[:, :n_vec]
    pca = np.linalg.svd(vectors - vectors.mean(0), full_matrices=False)[2][:directions].T

    def design(P: np.ndarray, X: np.ndarray) -> np.ndarray:
        local = np.hstack([X[:, n_vec:], X[:, :n_vec] @ pca])
        inter = (P[:, :, None] * local[:, None, :]).reshape(len(X), -1)
        return np.hstack([STACK_POSTERIOR_SCALE * P, X, cross * inter]).astype(np.float32)

    onehot = np.eye(len(f.classes))[[f.classes.index(c) for c in f.categories]]
    full = RidgeRegressor(STACK_RIDGE_ALPHA).fit(design(onehot, f.X), f.Y)
    inner = RidgeRegressor(STACK_RIDGE_ALPHA).fit(design(onehot[f.inner], f.X[f.inner]), f.Y[f.inner])
    return full.predict(design(post["cal"], f.X_test)), inner.predict(design(post["val"], f.X[f.val]))


ROBUST_CONCENTRATION, ROBUST_DRAWS, ROBUST_QUANTILE = 10.0, 50, 0.9  # the "@robust" deployed lam
XPCA = re.compile(r"stack-xpca(\d+)x([\d.]+)")  # stack-xpca<directions>x<weight>
XPCA_NAMES: list[str] = []  # the ones asked on the command line


def _xpca(m: FoldModels, n_vec: int, name: str) -> Callable[[], Scores]:
    match = XPCA.fullmatch(name)
    assert match is not None, name
    return lambda: cross_pca_stack(m, n_vec, int(match[1]), float(match[2]))


def weighted_lambda(scores: np.ndarray, cost: np.ndarray, weights: np.ndarray, budget: float) -> float:
    """``lambda_for_budget`` with a weighted mean spend: the smallest lam whose choices cost at most
    ``budget`` on average under ``weights`` (bisection, as lambda_for_budget)."""
    from coserve.router.mapping import choose_per_prompt

    def spend(lam: float) -> float:
        return shift.weighted_cost(cost, choose_per_prompt(scores, cost, lam), weights)

    if spend(0.0) <= budget:
        return 0.0
    low, high = 0.0, 1.0
    while spend(high) > budget:
        low, high = high, high * 2
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if spend(middle) <= budget else (middle, high)
    return high


def robust_lam(m: FoldModels, name: str, val_scores: np.ndarray, budget: float) -> float:
    """For ``<candidate>@robust``: the lam that meets ``budget`` on ROBUST_QUANTILE of ROBUST_DRAWS
    Dirichlet mixes (concentration ROBUST_CONCENTRATION) around the inner-validation rows' own mix;
    any other name: ``lambda_for_budget`` on those rows as they are."""
    from coserve.router.mapping import lambda_for_budget

    cost = m.f.axes[0].cost
    if not name.endswith("@robust"):
        return float(lambda_for_budget(val_scores, cost, budget))
    cats = [m.f.categories[i] for i in m.f.val]
    draws = shift.dirichlet_mixes(shift.observed_mix(cats), ROBUST_CONCENTRATION, ROBUST_DRAWS, m.f.seed)
    lams = [weighted_lambda(val_scores, cost, shift.row_weights(cats, q), budget) for q in draws]
    return float(np.quantile(lams, ROBUST_QUANTILE))


NAMED = (  # router_design's fixed names and this study's (``candidates``' keys but stack-xpca...)
    *RD.NAMED, "stack-bal0", "stack-bal", "stack-bal-ridge", "stack-bal-clf", "stack-sqrt", "stack+table",
    "stack@robust",
)  # fmt: skip


def candidates(m: FoldModels, n_vec: int, pca: np.ndarray) -> dict[str, Callable[[], Scores]]:
    """router_design's candidates and this study's."""
    return {
        **RD.candidates(m, n_vec, pca),
        "stack-bal0": lambda: balanced_stack(m, 0.0, 0.0),  # must equal "stack" (checks the weighted fit)
        "stack-bal": lambda: balanced_stack(m, 1.0, 1.0),
        "stack-bal-ridge": lambda: balanced_stack(m, 1.0, 0.0),
        "stack-bal-clf": lambda: balanced_stack(m, 0.0, 1.0),
        "stack-sqrt": lambda: balanced_stack(m, 0.5, 0.5),
        "stack+table": lambda: stack_toward_table(m),
        **{name: _xpca(m, n_vec, name) for name in XPCA_NAMES},
        "stack@robust": m.stacked,  # the stack's scores; its deployed lam from robust_lam
    }


# -- scoring under mixes ----------------------------------------------------------------------------------
def mixes(base: dict[str, float]) -> dict[str, list[dict[str, float]]]:
    """Every mix family around ``base`` (the DESIGN mix): tilts (one mix each) and Dirichlet draws."""
    out = {name: [shift.tilted_mix(base, up, factor)] for name, up, factor in TILTS}
    for name, concentration, n, seed in DIRICHLET:
        out[name] = shift.dirichlet_mixes(base, concentration, n, seed)
    return out


def score(Y: np.ndarray, cost: np.ndarray, pooled: dict[object, np.ndarray], weights: np.ndarray) -> dict[str, float]:
    """One candidate on one mix: front quality, margins, and the deployed lam's quality and spend."""
    points = [c for key, c in pooled.items() if isinstance(key, float)]
    s = shift.score_mix(Y, cost, points, weights, [*BUDGETS])
    reference = shift.best_single(Y, cost, weights, REFERENCE_B)[1]
    out: dict[str, float] = {}
    for b in BUDGETS:
        out[f"front_at_{b:g}"] = s.router[b]
        out[f"margin_at_{b:g}"] = s.router[b] - reference
        out[f"margin_same_at_{b:g}"] = s.router[b] - s.single[b][1]
        if ("inner", b) in pooled:
            c = pooled[("inner", b)]
            out[f"inner_at_{b:g}"] = shift.weighted_quality(Y, c, weights)
            out[f"inner_spend_at_{b:g}"] = shift.weighted_cost(cost, c, weights)
            out[f"inner_margin_at_{b:g}"] = out[f"inner_at_{b:g}"] - reference
            out[f"inner_over_at_{b:g}"] = float(out[f"inner_spend_at_{b:g}"] > OVER * b)  # mean: share of mixes
    return out


def sampling(Y: np.ndarray, cost: np.ndarray, pooled: dict[object, np.ndarray]) -> dict[str, float]:
    """How noisy a margin is on a sample: per budget, the standard deviation over rows of the deployed
    choice's score minus the reference expert's (the best single within 51 B), and the standard error
    of their mean on SAMPLE_ROWS rows (issue 16's held-out set) and on these rows."""
    reference = shift.best_single(Y, cost, np.full(len(Y), 1.0 / len(Y)), REFERENCE_B)[0]
    out: dict[str, float] = {}
    for b in BUDGETS:
        if ("inner", b) in pooled:
            diff = Y[np.arange(len(Y)), pooled[("inner", b)]] - Y[:, reference]
            sd = float(np.nanstd(diff[np.isfinite(diff)], ddof=1))
            out[f"diff_sd_at_{b:g}"] = sd
            out[f"diff_se{SAMPLE_ROWS}_at_{b:g}"] = sd / np.sqrt(SAMPLE_ROWS)
            out[f"diff_se_at_{b:g}"] = sd / np.sqrt(np.isfinite(diff).sum())
    return out


def evaluate(
    Y: np.ndarray,
    categories: Sequence[str],
    cost: np.ndarray,
    pooled: dict[str, dict[object, np.ndarray]],
    base: dict[str, float],
) -> dict[str, object]:
    """Every candidate on the plain mix, each tilt and each Dirichlet family (spread, and paired with stack)."""
    families = mixes(base)
    weights = {name: [shift.row_weights(categories, q) for q in qs] for name, qs in families.items()}
    plain = np.full(len(Y), 1.0 / len(Y))
    per: dict[str, dict[str, list[dict[str, float]]]] = {
        c: {name: [score(Y, cost, choices, w) for w in ws] for name, ws in weights.items()}
        for c, choices in pooled.items()
    }
    out: dict[str, object] = {}
    for c, choices in pooled.items():
        row: dict[str, object] = {"plain": _rounded(score(Y, cost, choices, plain) | sampling(Y, cost, choices))}
        for name, runs in per[c].items():
            if len(runs) == 1:
                row[name] = _rounded(runs[0])
                continue
            row[name] = {k: _rounded(shift.spread([r[k] for r in runs])) for k in runs[0]}
            row[name]["draws"] = {k: [round(r[k], 4) for r in runs] for k in PER_DRAW}  # type: ignore[index]
            if "stack" in per and c != "stack":
                row[name]["vs_stack"] = {  # type: ignore[index]
                    k: _rounded(shift.spread([r[k] - d[k] for r, d in zip(runs, per["stack"][name], strict=True)]))
                    for k in runs[0]
                    if k.startswith("front_at") or k.startswith("inner_at")
                }
        out[c] = row
    return out


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in d.items()}


def print_table(paths: Sequence[str]) -> None:
    """Per file, candidate and mix: front and margin at both budgets (Dirichlet families: mean / 10th
    percentile), and the deployed lam's quality at 10.2 B with its spend (Dirichlet: least-most)."""
    print(
        "| file | candidate | mix | front @ 10.2 B | margin @ 10.2 B | front @ 51 B | margin @ 51 B "
        "| deployed @ 10.2 B (spent) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        report = json.loads(Path(path).read_text())
        if "shift" not in report:  # e.g. the --explain file, which a glob of the session's files matches
            print(f"{path}: not a shift report (no 'shift'), left out", file=sys.stderr)
            continue
        for name, row in report["shift"].items():
            for mix, r in row.items():
                if isinstance(r["front_at_10.2"], dict):
                    cells = [
                        f"{r[k]['mean']:.4f} / {r[k]['worst_decile']:.4f}"
                        for k in ("front_at_10.2", "margin_at_10.2", "front_at_51", "margin_at_51")
                    ]
                    spend = r.get("inner_spend_at_10.2")
                    spent = (
                        f"{r['inner_at_10.2']['mean']:.4f} ({spend['worst']:.2f}-{spend['max']:.2f} B)"
                        if spend
                        else "-"
                    )
                else:
                    cells = [f"{r[k]:.4f}" for k in ("front_at_10.2", "margin_at_10.2", "front_at_51", "margin_at_51")]
                    spent = (
                        f"{r['inner_at_10.2']:.4f} ({r['inner_spend_at_10.2']:.2f} B)" if "inner_at_10.2" in r else "-"
                    )
                print(f"| {Path(path).stem} | {name} | {mix} | {' | '.join(cells)} | {spent} |")


def _candidate_row(path: str, candidate: str) -> dict[str, Any]:
    """``candidate``'s row of the shift report at ``path``; a clear exit where it has none."""
    rows = json.loads(Path(path).read_text()).get("shift", {})
    if candidate not in rows:
        raise SystemExit(f"{path}: no candidate {candidate!r} (has: {', '.join(rows) or 'none, not a shift report'})")
    return dict(rows[candidate])


def paired(a: str, b: str) -> dict[str, dict[str, dict[str, float]]]:
    """``FILE:CANDIDATE`` b minus a, draw by draw, per Dirichlet family and budget (same mixes, same rows)."""
    (fa, ca), (fb, cb) = (x.rsplit(":", 1) for x in (a, b))
    ra, rb = (_candidate_row(f, c) for f, c in ((fa, ca), (fb, cb)))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for family, row in ra.items():
        if isinstance(row, dict) and "draws" in row:
            out[family] = {
                k: _rounded(shift.spread(np.subtract(rb[family]["draws"][k], row["draws"][k]).tolist()))
                for k in PER_DRAW
            }
    return out


def explain(report: dict[str, object], reference_quality: float, factors: Sequence[float]) -> dict[str, object]:
    """How far the category mix must move to give the best-single reference expert (51 B) the quality
    ``reference_quality`` AND the router its least margin over it at <= 10.2 B: a linear programme
    over mixes ``q`` within ``[p / F, p * F]`` of the scored rows' mix ``p`` (capped at 1), per factor
    F. Per category, the router's quality and spend at its deployed lam and the expert's quality come
    from a router_design report (``by_category_at_10.2`` of ``stack``); with lam fixed, the router's
    quality and spend under ``q`` are linear in ``q``, and the spend must stay within 10.2 B. Also the
    same without the reference-quality constraint."""
    from scipy.optimize import linprog

    by = report["candidates"]["stack"]["by_category_at_10.2"]  # type: ignore[index]
    cats = sorted(by)
    e = list(report["experts"]).index(report["baselines"]["best_single_at_51"]["expert"])  # type: ignore[arg-type, index]
    n = np.array([by[k]["n"] for k in cats], dtype=float)
    p = n / n.sum()
    router = np.array([by[k]["router"] for k in cats])
    spend = np.array([by[k]["router_params_b"] for k in cats])
    expert = np.array([by[k]["experts"][e] for k in cats])
    out: dict[str, object] = {
        "categories": cats,
        "mix": [round(float(x), 4) for x in p],
        "router": router.tolist(),
        "router_params_b": spend.tolist(),
        "expert": expert.tolist(),
        "plain": {"router": round(float(p @ router), 4), "expert": round(float(p @ expert), 4)},
    }
    for factor in factors:
        for name, target in (("free", None), ("at_reference", reference_quality)):
            equal = [np.ones(len(p))] + ([expert] if target is not None else [])
            bounds = list(zip(np.minimum(p / factor, 1.0), np.minimum(p * factor, 1.0), strict=True))
            res = linprog(
                router - expert,
                A_ub=[spend],
                b_ub=[BUDGETS[0]],
                A_eq=equal,
                b_eq=[1.0] + ([target] if target is not None else []),
                bounds=bounds,
            )
            key = f"F{factor:g}_{name}"
            if res.status != 0:
                out[key] = None
                continue
            q = res.x
            out[key] = {
                "least_margin": round(float(res.fun), 4),
                "router": round(float(q @ router), 4),
                "expert": round(float(q @ expert), 4),
                "router_params_b": round(float(q @ spend), 2),
                "mix": {k: round(float(x), 4) for k, x in zip(cats, q, strict=True)},
            }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--table":
        print_table(sys.argv[2:])
        return 0
    if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--explain":  # REPORT QUALITY OUT
        payload = explain(json.loads(Path(sys.argv[2]).read_text()), float(sys.argv[3]), EXPLAIN_FACTORS)
        payload["reference_quality"] = float(sys.argv[3])
        write_data(Path(sys.argv[4]), payload, ".venv/bin/python scripts/router_shift.py " + " ".join(sys.argv[1:]))
        return 0
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--paired":
        print(json.dumps(paired(sys.argv[2], sys.argv[3]), indent=1))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--experts", required=True)
    p.add_argument("--stage", choices=("design", "confirm"), required=True)
    p.add_argument("--candidates", default="stack,stack-bal,stack+table")
    p.add_argument("--extra-features", action="store_true", help="append router_design.extra_features()")
    p.add_argument("--cv-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    names = RD.candidate_names(args.candidates)
    unknown = RD.unknown_candidates(names, NAMED, XPCA.pattern)
    if unknown:  # before loading and embedding, not in the first fold
        known = ", ".join(NAMED)
        p.error(f"--candidates: unknown {', '.join(unknown)}; known: {known}, stack-xpcaDxW, stack-v:OPTION=N,...")
    data, cost, X, n_vec = RD.load(args.data, args.experts, args.extra_features)
    design_idx, confirm_idx = grouped_folds(data.prompts, 5, RD.SPLIT_SEED)[RD.CONFIRM_FOLD]
    RD.VARIANTS.extend(n for n in names if n.startswith("stack-v:"))
    XPCA_NAMES.extend(n for n in names if XPCA.fullmatch(n))
    design = data.subset(design_idx)
    base = shift.observed_mix(design.categories)
    if args.stage == "design":
        splits = grouped_folds(design.prompts, 5, args.cv_seed)
        pooled, extras = RD.pooled_choices(
            X[design_idx], design, splits, cost, names, n_vec, args.cv_seed, candidates, robust_lam
        )
        rows = np.concatenate([te for _, te in splits])
        scored = design.subset(rows)
    else:
        order = np.concatenate([design_idx, confirm_idx])
        k = len(design_idx)
        both = data.subset(order)
        splits = [(np.arange(k), np.arange(k, len(both)))]
        pooled, extras = RD.pooled_choices(X[order], both, splits, cost, names, n_vec, 0, candidates, robust_lam)
        rows = np.arange(k, len(both))
        scored = both.subset(rows)
    pooled = {c: {key: v[rows] for key, v in by.items()} for c, by in pooled.items()}
    payload = {
        "stage": args.stage,
        "cv_seed": args.cv_seed if args.stage == "design" else None,
        "split": {"seed": RD.SPLIT_SEED, "confirm_fold": RD.CONFIRM_FOLD, "n_scored": len(rows)},
        "embedder": RD.STACK_EMBEDDER + ("+extra_features" if args.extra_features else ""),
        "budgets_b": list(BUDGETS),
        "reference_b": REFERENCE_B,
        "experts": list(data.experts),
        "params_b": [float(x) for x in cost],
        "design_mix": {k: round(v, 4) for k, v in base.items()},
        "scored_mix": {k: round(v, 4) for k, v in shift.observed_mix(scored.categories).items()},
        "tilts": {name: {"up": list(up), "factor": factor} for name, up, factor in TILTS},
        "dirichlet": {name: {"concentration": c, "draws": n, "seed": s} for name, c, n, s in DIRICHLET},
        "shift": evaluate(scored.scores, scored.categories, cost, pooled, base),
        "extras": {k: [float(x) for x in v] for k, v in extras.items() if all(np.isscalar(x) for x in v)},
        "note": "front_at_B: the lam sweep's re-weighted Pareto front at B; margin_at_B: front minus the best "
        "single expert within 51 B at the same mix; margin_same_at_B: minus the best within B; inner_*: lam "
        "set per fold on the inner split (deployed), its quality and spend under the mix; Dirichlet families: "
        "mean, 10th percentile (worst_decile) and worst over the draws; vs_stack: paired difference per draw.",
    }
    command = ["scripts/router_shift.py", *(argv if argv is not None else sys.argv[1:])]
    write_data(Path(args.out), payload, ".venv/bin/python " + " ".join(command))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_script(main)
