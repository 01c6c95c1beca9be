"""Pareto plot of an evaluation report: each router's front as a line, baselines as labelled points.

One panel per cost axis present in the report (average active parameters in billions; average
price in USD per million tokens). The x axis is logarithmic when the costs span more than 10x.
Uses matplotlib's Agg backend (no display). This module knows nothing about how reports are made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coserve.eval.metrics import front

__all__ = ["plot_map_frontier", "plot_report"]

AXES = {
    "params": ("avg_params_b", "average active parameters (B)"),
    "price": ("avg_price", "average price (USD / M tokens)"),
}


def plot_report(report: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """Draw the report's quality-vs-cost fronts and save them as a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_present = [a for a in report["meta"]["cost_axes"] if a in AXES]
    fig, panels = plt.subplots(1, len(axes_present), figsize=(6.4 * len(axes_present), 4.6), squeeze=False)
    baselines = report["baselines"]
    for panel, axis in zip(panels[0], axes_present, strict=True):
        key, label = AXES[axis]
        for name, entry in sorted(report["routers"].items()):
            pts = [p for p in entry["points"] if p["axis"] == axis and p[key] is not None]
            xs, ys = front([p[key] for p in pts], [p["quality"] for p in pts])
            if len(xs):
                panel.plot(xs, ys, marker=".", markersize=4, linewidth=1.2, label=name)
        if axis == "params" and "cascade" in report:  # coserve eval --cascade: the cascade's thresholds
            cascade = [p["cascade"] for p in report["cascade"]["points"]]
            spent, quality = [c["avg_params_b"] for c in cascade], [c["quality"] for c in cascade]
            panel.plot(spent, quality, marker="s", markersize=4, linestyle="--", linewidth=1.0, label="cascade")
            if "gated" in report["cascade"]:  # the library's start gate (routing.cascade.start_gate)
                gated = [p["cascade"] for p in report["cascade"]["gated"]["points"]]
                spent, quality = [c["avg_params_b"] for c in gated], [c["quality"] for c in gated]
                panel.plot(
                    spent, quality, marker="^", markersize=4, linestyle=":", linewidth=1.0, label="gated cascade"
                )
        costs = []
        for name, base in baselines.items():
            if base[key] is None:
                continue
            costs.append(base[key])
            special = name in ("oracle", "random")
            panel.scatter(
                [base[key]],
                [base["quality"]],
                marker="*" if name == "oracle" else ("x" if special else "o"),
                color="black" if name == "oracle" else ("grey" if special else "tab:red"),
                s=60 if special else 25,
                zorder=5,
            )
            panel.annotate(name, (base[key], base["quality"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if costs and min(costs) > 0 and max(costs) / min(costs) > 10:
            panel.set_xscale("log")
        panel.set_xlabel(label)
        panel.set_ylabel("quality (mean score)")
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def _save(fig: Any, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_map_frontier(
    frontier: list[tuple[float, float]],
    singles: dict[str, tuple[float, float]],
    chosen: dict[str, tuple[float, float]],
    out: str | Path,
    xlabel: str,
    title: str = "",
) -> Path:
    """Quality-vs-cost of category maps: the optimiser's front as a step line, each single expert
    as a point, and named chosen maps (the library's at its budgets) as stars. Points are (cost, quality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panel = plt.subplots(figsize=(6.4, 4.6))
    if frontier:
        xs, ys = zip(*sorted(frontier), strict=True)
        panel.step(xs, ys, where="post", marker=".", linewidth=1.2, label="budget-optimal maps")
    for name, (x, y) in singles.items():
        panel.scatter([x], [y], color="tab:red", s=25, zorder=5)
        panel.annotate(name, (x, y), fontsize=8, xytext=(3, -10), textcoords="offset points")
    for name, (x, y) in chosen.items():
        panel.scatter([x], [y], marker="*", color="black", s=90, zorder=6)
        panel.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    panel.set_xlabel(xlabel)
    panel.set_ylabel("expected quality (mean score)")
    panel.grid(alpha=0.3)
    panel.legend(fontsize=8, loc="lower right")
    if title:
        panel.set_title(title, fontsize=10)
    return _save(fig, out)
