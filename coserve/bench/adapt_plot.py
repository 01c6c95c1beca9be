"""The plot of a ``coserve bench adapt`` report: average cost against the target, and quality, per window.

Reads the report's windows only; knows nothing about the replay or the router.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_adapt"]


def plot_adapt(report: dict[str, Any], path: str | Path) -> Path:
    """Average cost against the target, and quality, per window, with the shock marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [w["start"] for w in report["windows"]]
    fig, (cost_ax, quality_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    cost_ax.plot(starts, [w["avg_cost"] for w in report["windows"]], marker="o", label="adaptive")
    cost_ax.axhline(report["target"], color="black", linestyle="--", label="target")
    cost_ax.set_ylabel(f"average cost ({report['budget_axis']})")
    quality_ax.plot(starts, [w["quality"] for w in report["windows"]], marker="o", label="adaptive")
    quality_ax.axhline(report["quality"]["static"], color="grey", linestyle=":", label="static (stream mean)")
    quality_ax.set_ylabel("quality")
    quality_ax.set_xlabel("request (window start)")
    for ax in (cost_ax, quality_ax):
        ax.axvline(report["shock"]["at"], color="red", alpha=0.5, label="shock")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
