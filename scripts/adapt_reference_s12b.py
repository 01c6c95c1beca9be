"""Why the running reference (session 12, branch bias12) did not help: what it learns on the 27 tuning runs.

Each setting is replayed on the 27 tuning runs (the three budgets, seeds 0 to 8) with every other knob at
the defaults, the reference's memory 300 and 1,000 at the defaults' level 8 and drift 0.075. Every
feedback the router gets is recorded with the detector's two sides before it (was the CUSUM quiet, so that
the residual joins the reference?) and the feedback expert's reference after it. Reported per setting:

* ``learnt_share_before_shock``: the share of feedbacks before the shock that arrived while the CUSUM was
  quiet (both sides below ``REFERENCE_QUIET`` x the level) and so joined the reference;
  ``both_at_zero_share_before_shock``: the share that arrived while both sides stood at 0 (the textbook
  guard's);
* ``reference_at_shock``: per expert, the mean over runs of its reference at the shock (what it removes:
  compare the per-expert mean residuals of docs/data/adapt-calibration-s12.json);
* ``shocked``: per run, the shocked expert's reference at the shock and at its first true alarm (or at the
  stream's end where none came), and their difference: how much of the drop it learnt (``absorbed``).

    python scripts/adapt_reference_s12b.py --data ../shared/data/llmrouter --json docs/data/adapt-reference-s12b.json

Only the tuning split is replayed (``adapt_tune.tuning_streams``). Knows nothing about the checks.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from adapt_tune import BUDGETS, CONFIRM_SEEDS, SEEDS, tuning_streams  # beside this script

from coserve.bench.adapt import AdaptOptions, replay_adapt
from coserve.bench.provenance import write_data
from coserve.bench.script_run import run_script
from coserve.eval.data import load_costs
from coserve.router.drift_reference import REFERENCE_QUIET
from coserve.router.embedders import STACK_EMBEDDER
from coserve.router.online import OnlineRouter

MEMORIES = (300.0, 1000.0)
Record = tuple[int, int, bool, bool, float]  # served, expert, quiet before it, both sides at 0 before it, its reference


def _recording(records: list[Record]) -> Any:
    """OnlineRouter.feedback, recording the detector's quiet and the expert's reference around each call."""
    original = OnlineRouter.feedback

    def feedback(self: OnlineRouter, category: int, expert: int, score: float, predicted: float | None = None,
                 vector: Any = None) -> None:  # fmt: skip
        detector = self.detector
        assert detector is not None and detector.reference is not None
        level = REFERENCE_QUIET * detector.threshold
        up, down = detector.stat["up"][expert], detector.stat["down"][expert]
        quiet, zero = bool(up < level and down < level), bool(up == 0.0 and down == 0.0)
        original(self, category, expert, score, predicted, vector)
        records.append((self._served, expert, quiet, zero, float(detector.reference.value(expert))))

    return feedback


def _setting(fitted: Any, costs: Any, memory: float) -> dict[str, Any]:
    learnt: list[bool] = []
    at_zero: list[bool] = []
    at_shock: dict[str, list[float]] = {}
    shocked_rows = []
    for axis, target in BUDGETS:
        for seed in SEEDS + CONFIRM_SEEDS:
            f, records = fitted[axis], []
            OnlineRouter.feedback = _recording(records)  # type: ignore[method-assign]
            options = AdaptOptions(budget_axis=axis, target=target, seed=seed, change_reference="running",
                                   change_reference_memory=memory)  # fmt: skip
            report = replay_adapt(f.offline, f.stream, f.stream_category, costs, options, f.predicted, f.vectors)
            shock_at, experts = report["shock"]["at"], report["experts"]
            shocked = experts.index(report["shock"]["expert"])
            last: dict[int, float] = {}
            for served, expert, quiet, zero, reference in records:
                if served - 1 < shock_at:
                    learnt.append(quiet)
                    at_zero.append(zero)
                    last[expert] = reference
            for expert, reference in last.items():
                at_shock.setdefault(experts[expert], []).append(reference)
            delay = report["true_alarm_delay"]
            until = shock_at + delay if delay is not None else sys.maxsize  # the first true alarm, or the end
            after = [ref for served, e, _, _, ref in records if e == shocked and shock_at <= served - 1 < until]
            start, end = last.get(shocked, 0.0), (after[-1] if after else last.get(shocked, 0.0))
            row = {"axis": axis, "target": target, "seed": seed, "true_alarm_delay": delay}
            shocked_rows.append(
                {**row, "reference_at_shock": start, "reference_before_alarm": end, "absorbed": end - start}
            )
    absorbed = [row["absorbed"] for row in shocked_rows]
    return {
        "memory": memory,
        "learnt_share_before_shock": float(np.mean(learnt)),
        "both_at_zero_share_before_shock": float(np.mean(at_zero)),
        "reference_at_shock": {name: float(np.mean(values)) for name, values in sorted(at_shock.items())},
        "absorbed_median": float(np.median(absorbed)),
        "absorbed_in_missed_runs_median": float(
            np.median([r["absorbed"] for r in shocked_rows if r["true_alarm_delay"] is None] or [np.nan])
        ),
        "missed": sum(r["true_alarm_delay"] is None for r in shocked_rows),
        "shocked": shocked_rows,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    costs = load_costs(args.data / "experts.json")
    fitted, sizes = tuning_streams(args.data, costs, STACK_EMBEDDER)
    settings = [_setting(fitted, costs, memory) for memory in MEMORIES]
    payload = {
        "note": "tuning split only; change_reference running at the defaults' level and drift; references in "
        "residual units (score less its estimate)",
        "split": sizes, "runs": len(BUDGETS) * len(SEEDS + CONFIRM_SEEDS), "quiet_share_of_level": REFERENCE_QUIET,
        "settings": settings,
    }  # fmt: skip
    write_data(args.json, payload, "python scripts/adapt_reference_s12b.py " + shlex.join(argv))
    for row in settings:
        print({k: v for k, v in row.items() if k != "shocked"})
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
