"""Why the proportional change model raises more false alarms (session 12): how the detector's inputs look
on the 27 tuning runs, the router at its defaults (the flat model).

Every feedback the router gets is recorded with the score the prompt was expected to have (``e``: the
prediction plus its cell's correction, within [0, 1], as the proportional model reads it) and the score
fed back (``s``). Reported: ``calibration``, per bin of ``e`` (width 0.1) before the shock, the number of
feedbacks, the mean ``e`` and the mean ``s`` (a calibrated estimate has them equal); ``per_expert``, per
expert before the shock (no change: the detector's null) and for the shocked expert after it (its drop),
the mean per-feedback increment of the down side of each model at the defaults' drift: flat ``-r - drift``
against ``e (-r) - drift e^2``, with their standard deviations (a CUSUM's false alarms come from a null
mean near 0 against a large spread; its delay from the drop's mean).

    python scripts/adapt_calibration_s12.py --data ../shared/data/llmrouter --json docs/data/adapt-calibration-s12.json

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
from coserve.router.embedders import STACK_EMBEDDER
from coserve.router.online import OnlineRouter

Record = tuple[int, int, float, float]  # served requests, expert, expected score, score fed back


def _recording(records: list[Record]) -> Any:
    """OnlineRouter.feedback, recording each feedback's expected score first."""
    original = OnlineRouter.feedback

    def feedback(self: OnlineRouter, category: int, expert: int, score: float, predicted: float | None = None,
                 vector: Any = None) -> None:  # fmt: skip
        offset = 0.0 if predicted is None else self.prompt_weight * (predicted - float(self.offline[category, expert]))
        expected = min(1.0, max(0.0, float(self.posterior.estimate()[category, expert]) + offset))
        records.append((self._served, expert, expected, score))
        original(self, category, expert, score, predicted, vector)

    return feedback


def _columns(rows: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([e for e, _ in rows]), np.array([s for _, s in rows])


def _increments(e: np.ndarray, s: np.ndarray, drift: float) -> dict[str, Any]:
    r = s - e
    flat, proportional = -r - drift, e * -r - drift * e * e
    return {"feedbacks": len(e), "mean_e": float(e.mean()), "mean_s": float(s.mean()),
            "flat_mean": float(flat.mean()), "flat_sd": float(flat.std()),
            "proportional_mean": float(proportional.mean()), "proportional_sd": float(proportional.std())}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    costs = load_costs(args.data / "experts.json")
    fitted, sizes = tuning_streams(args.data, costs, STACK_EMBEDDER)
    drift = AdaptOptions().change_drift
    before: list[tuple[float, float]] = []
    per_expert: dict[str, list[tuple[float, float]]] = {}
    shocked_after: list[tuple[float, float]] = []
    for axis, target in BUDGETS:
        for seed in SEEDS + CONFIRM_SEEDS:
            f, records = fitted[axis], []
            OnlineRouter.feedback = _recording(records)  # type: ignore[method-assign]
            options = AdaptOptions(budget_axis=axis, target=target, seed=seed)
            report = replay_adapt(f.offline, f.stream, f.stream_category, costs, options, f.predicted, f.vectors)
            shock_at, experts = report["shock"]["at"], report["experts"]
            shocked = experts.index(report["shock"]["expert"])
            for served, expert, e, s in records:
                if served - 1 < shock_at:
                    before.append((e, s))
                    per_expert.setdefault(experts[expert], []).append((e, s))
                elif expert == shocked:
                    shocked_after.append((e, s))
    e, s = _columns(before)
    bins = np.minimum((e * 10).astype(int), 9)
    calibration = [
        {"bin": [b / 10, (b + 1) / 10], "feedbacks": int((bins == b).sum()),
         "mean_e": float(e[bins == b].mean()), "mean_s": float(s[bins == b].mean())}
        for b in range(10) if (bins == b).any()
    ]  # fmt: skip
    null = {name: _increments(*_columns(rows), drift) for name, rows in per_expert.items()}
    drop = _increments(*_columns(shocked_after), drift)
    payload = {
        "note": "tuning split only; the router at its defaults (flat model); increments of the detector's down side",
        "split": sizes, "drift": drift, "runs": len(BUDGETS) * len(SEEDS + CONFIRM_SEEDS),
        "calibration": calibration, "before_shock_all": _increments(e, s, drift),
        "per_expert_before_shock": null, "shocked_expert_after_shock": drop,
    }  # fmt: skip
    write_data(args.json, payload, "python scripts/adapt_calibration_s12.py " + shlex.join(argv))
    for row in calibration:
        print(row)
    print("all before", payload["before_shock_all"])
    for name, row in null.items():
        print(name, row)
    print("shocked after", drop)
    return 0


if __name__ == "__main__":
    run_script(lambda: main(sys.argv[1:]))
