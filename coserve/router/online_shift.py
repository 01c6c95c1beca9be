"""How far a downward alarm moves each of its expert's categories (``change_shift_pool``, session 20, off at 0).

The change detector (``drift.ChangeDetector``) pools an expert's residuals over categories, and an alarm moves
every category's mean by one estimated shift: the mean residual since the down side last stood at 0. That is
right for a change of the whole expert (the benchmark's shock: every category drops alike) and wrong where the
evidence came from a few categories whose offline estimate was too high (a local miscalibration the prior's
cross-fit did not see): there the pooled move drags down the categories where the expert's feedback showed
nothing wrong, it loses their traffic, and with no exploration no feedback ever corrects that. Of the
official 20 B run's misses, adaptive - static is such a false drop's (qwen2.5-7b at request 5,645, -0.30).

``CategoryEvidence`` keeps, per (category, expert), the sum and count of the residuals in the current down-side
episode (exactly those the detector's pooled estimate averages), and moves category ``k`` by the shrunk mean
``(sum_k + pool * shift) / (count_k + pool)``: a category with no residuals in the episode moves by the pooled
shift (as before), one with many by its own mean residual. ``pool`` 0 is off: every category moves by the
pooled shift. Its sums are not saved with the state: after a restart the episode's moves are the pooled one.

Pure numbers; knows nothing about posteriors or routing (``coserve.router.online`` feeds it).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CategoryEvidence"]


class CategoryEvidence:
    """Per (category, expert), the residuals of the detector's current downward episode, summed and counted."""

    def __init__(self, categories: int, experts: int, pool: float = 0.0) -> None:
        if categories <= 0 or experts <= 0 or not (pool >= 0 and np.isfinite(pool)):
            raise ValueError("categories and experts must be positive and pool a finite number >= 0")
        self.pool = float(pool)  # pseudo-counts of the pooled shift in each category's move (0: off)
        self.total = np.zeros((categories, experts))
        self.count = np.zeros((categories, experts))

    def observed(self, category: int, expert: int, residual: float, episode_runs: bool) -> None:
        """A residual the detector just read: it joins the expert's episode where the down side still runs
        (``episode_runs``: its statistic above 0, or an alarm it completed), else the episode restarts."""
        if self.pool == 0:
            return
        if episode_runs:
            self.total[category, expert] += residual
            self.count[category, expert] += 1.0
        else:
            self.forget(expert)

    def move(self, expert: int, shift: float) -> float | np.ndarray:
        """How far a downward alarm of ``expert`` with pooled ``shift`` moves each category ``[K]`` (the
        pooled shift itself where off)."""
        if self.pool == 0:
            return shift
        return (self.total[:, expert] + self.pool * shift) / (self.count[:, expert] + self.pool)

    def forget(self, expert: int) -> None:
        """The expert's episode ended (an alarm, or its down side back at 0)."""
        self.total[:, expert] = 0.0
        self.count[:, expert] = 0.0
