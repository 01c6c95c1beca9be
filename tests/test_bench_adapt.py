"""`coserve bench adapt`: the cost-matched baselines, the split, and the report on a tiny synthetic stream."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coserve.bench.adapt import AdaptOptions, lagrangian_mix, split_by_prompt
from coserve.bench.adapt_baselines import best_map_keeps
from coserve.cli import main
from coserve.errors import ConfigError
from coserve.eval.data import OutcomeSet


def test_lagrangian_mix_meets_the_spend_by_mixing_two_maps() -> None:
    chooser = np.array([[0.5, 0.9]])
    cost = np.array([1.0, 3.0])
    mix = lagrangian_mix(chooser, chooser, np.array([1.0]), cost, 2.0)
    assert mix["maps"] == [[1], [0]]
    assert mix["share_dearer"] == pytest.approx(0.5)  # 0.5 * 3 + 0.5 * 1 = 2
    assert mix["cost"] == pytest.approx(2.0)
    assert mix["quality"] == pytest.approx(0.7)


def test_lagrangian_mix_scores_the_chosen_maps_with_the_truth() -> None:
    chooser = np.array([[0.5, 0.9], [0.2, 0.9]])
    truth = np.array([[0.6, 0.1], [0.3, 0.8]])
    p = np.array([3.0, 1.0])  # weights normalised to 0.75 / 0.25
    mix = lagrangian_mix(chooser, truth, p, np.array([1.0, 3.0]), 1.5)
    # Category 0 turns cheap above weight 0.2, category 1 above 0.35; between them the map is [0, 1],
    # costing 0.75 * 1 + 0.25 * 3 = 1.5: the spend is met by that map, scored with the truth.
    assert mix["cost"] == pytest.approx(1.5)
    assert mix["quality"] == pytest.approx(0.75 * 0.6 + 0.25 * 0.8)


def test_lagrangian_mix_cannot_spend_beyond_the_best_map() -> None:
    chooser = np.array([[0.5, 0.9]])
    mix = lagrangian_mix(chooser, chooser, np.array([1.0]), np.array([1.0, 3.0]), 10.0)
    assert mix["maps"] == [[1]] and mix["cost"] == 3.0 and mix["quality"] == pytest.approx(0.9)


def test_split_by_prompt_is_disjoint_and_keeps_repeats_together() -> None:
    prompts = tuple(f"prompt {i % 40}" for i in range(100))
    outcomes = OutcomeSet(
        tuple(str(i) for i in range(100)), prompts, ("a",) * 100, ("x",), np.zeros((100, 1), np.float32)
    )
    first, second = split_by_prompt(outcomes)
    assert sorted(first.tolist() + second.tolist()) == list(range(100))
    assert not {prompts[i] for i in first} & {prompts[i] for i in second}
    assert 0 < len(first) < 100


# Three categories told apart by their words; expert "cheap" (1B) is good at chat, "mid" (3B) at math,
# "big" (9B) at everything. Scores are 0/1, drawn with those means.
MEANS = {"chat": (0.8, 0.5, 0.9), "math": (0.1, 0.8, 0.9), "code": (0.2, 0.3, 0.9)}
WORDS = {"chat": "hello weather friend", "math": "integral sum equation", "code": "python function compile"}


def _outcomes(path: Path, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w") as out:
        for i in range(n):
            category = list(MEANS)[i % 3]
            scores = {e: float(rng.random() < m) for e, m in zip(("cheap", "mid", "big"), MEANS[category], strict=True)}
            prompt = f"{WORDS[category]} item {seed}-{i}"
            out.write(
                json.dumps({"id": f"{seed}-{i}", "prompt": prompt, "category": category, "scores": scores}) + "\n"
            )


def test_bench_adapt_writes_the_issue_fields(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prior, stream, experts = tmp_path / "prior.jsonl", tmp_path / "stream.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 150)
    _outcomes(stream, 2, 150)
    experts.write_text(
        json.dumps(
            {
                e: {"params_b": b, "input_price": b / 10, "output_price": b / 10}
                for e, b in (("cheap", 1), ("mid", 3), ("big", 9))
            }
        )
    )
    out = tmp_path / "adapt.json"
    argv = ["bench", "adapt", "--prior", str(prior), "--stream", str(stream), "--experts", str(experts)]
    argv += ["--budget-params", "3", "--json", str(out), "--requests", "3000", "--phases", "3", "--embedder", "hashing"]
    assert main([*argv, "--plot", str(tmp_path / "adapt.png")]) == 0
    assert (tmp_path / "adapt.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads(out.read_text())
    assert report["provenance"]["command"].endswith("--plot " + str(tmp_path / "adapt.png"))
    assert report["requests"] == 3000 and len(report["phases"]) == 3
    assert [w["start"] for w in report["windows"]] == [0, 500, 1000, 1500, 2000, 2500]
    assert all(w["target"] == 3.0 for w in report["windows"])
    late = [abs(w["avg_cost"] / 3.0 - 1) for w in report["windows"][2:]]
    assert report["tracking_error_max"] == pytest.approx(max(late))
    assert report["shock"]["at"] == 1500
    shock = report["shock"]
    assert 0.0 <= shock["best_share_after"] <= 1.0 and 0.0 <= shock["share_before"] <= 1.0
    assert shock["best_map_keeps_it"] == best_map_keeps(shock["share_before"], shock["best_share_after"])
    assert all(0.0 <= w["weight_at_zero"] <= 1.0 for w in report["windows"])
    assert 100 <= report["recovery_requests"] <= 1500
    assert len(report["alarms"]) >= report["change_alarms"]  # every alarm listed, the restarts of a rise too
    assert report["false_alarms"] == sum(not a["true"] for a in report["alarms"])
    q = report["quality"]
    assert q["static_avg_cost"] == pytest.approx(3.0)  # the static baseline is cost-matched
    assert q["hindsight_avg_cost"] == pytest.approx(report["realised_avg_cost"])
    assert 0.0 <= q["adaptive"] <= 1.0
    assert report["probed_share"] == 0.0  # change_probe is off by default
    assert "tracking_error_max" in capsys.readouterr().out
    assert main(argv) == 0  # seeded: the same command gives the same figures
    again = json.loads(out.read_text())
    assert again["windows"] == report["windows"] and again["quality"] == report["quality"]


def test_bench_adapt_refuses_bad_knobs_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    assert main([*argv, "--budget-params", "3", "--json", str(tmp_path / "x.json"), "--feedback", "1.5"]) == 2
    assert "feedback" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # each was "target, requests, phases and window must be positive", naming none of them
        (["--budget-price", "-5"], "target (the budget) -5.0: must be positive"),
        (["--budget-params", "3", "--requests", "0"], "requests 0: must be positive"),
        (["--budget-params", "3", "--phases", "-2"], "phases -2: must be positive"),
    ],
)
def test_bench_adapt_names_the_count_that_is_not_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    assert main([*argv, *flags, "--json", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err == f"coserve: error: {message}\n"
    assert not (tmp_path / "x.json").exists()


def test_bench_adapt_short_stream_has_no_tracking_error(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prior, experts = tmp_path / "prior.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 120)
    experts.write_text(
        json.dumps(
            {e: {"params_b": b, "input_price": 1, "output_price": 1} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}
        )
    )
    out = tmp_path / "short.json"
    argv = ["bench", "adapt", "--prior", str(prior), "--experts", str(experts), "--budget-params", "3"]
    assert main([*argv, "--json", str(out), "--requests", "900", "--embedder", "hashing"]) == 0
    report = json.loads(out.read_text())
    assert report["tracking_error_max"] is None  # no window starts at request 1,000 or later
    assert report["stream"].endswith("(other half)") and report["prior_rows"] + report["stream_rows"] == 120
    assert "tracking_error_max -" in capsys.readouterr().out


def test_bench_adapt_runs_a_prior_of_one_category(tmp_path: Path, cache: Path) -> None:
    # Only math rows: no classifier can be fitted, yet one category is a valid library (one map entry).
    prior, experts = tmp_path / "math.jsonl", tmp_path / "experts.json"
    _outcomes(tmp_path / "all.jsonl", 1, 360)
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    math = [r for r in rows if r["category"] == "math"]
    prior.write_text("".join(json.dumps(r) + "\n" for r in math))
    experts.write_text(json.dumps({e: {"params_b": b} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}))
    out = tmp_path / "one.json"
    argv = ["bench", "adapt", "--prior", str(prior), "--experts", str(experts), "--budget-params", "3"]
    assert main([*argv, "--json", str(out), "--requests", "1200", "--embedder", "hashing"]) == 0
    report = json.loads(out.read_text())
    assert report["categories"] == ["math"] and report["phases"] == [{"math": 1.0}] * 4
    # One category: the baselines are still cost-matched, and the controller holds 3 B (mid's cost).
    assert report["quality"]["static_avg_cost"] == pytest.approx(3.0)
    assert report["realised_avg_cost"] == pytest.approx(3.0, rel=0.05)
    argv += ["--granularity", "prompt", "--requests", "1200", "--embedder", "hashing"]
    assert main([*argv, "--json", str(tmp_path / "one-prompt.json")]) == 0
    prompt = json.loads((tmp_path / "one-prompt.json").read_text())
    assert prompt["options"]["granularity"] == "prompt"
    assert prompt["realised_avg_cost"] == pytest.approx(3.0, rel=0.05)


def test_the_per_prompt_predictor_can_read_other_vectors_than_the_classifier(tmp_path: Path, cache: Path) -> None:
    from coserve.bench.adapt import fit_stream
    from coserve.eval.data import embed_cached, load_costs, load_outcomes
    from coserve.router.embedders import make_embedder

    _outcomes(tmp_path / "prior.jsonl", 1, 150)
    _outcomes(tmp_path / "stream.jsonl", 2, 60)
    experts = {e: {"params_b": b} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}
    (tmp_path / "experts.json").write_text(json.dumps(experts))
    prior, _ = load_outcomes(tmp_path / "prior.jsonl")
    stream, _ = load_outcomes(tmp_path / "stream.jsonl", experts=prior.experts)
    costs = load_costs(tmp_path / "experts.json")
    embedder = make_embedder("hashing")
    X_prior, X_stream = embed_cached(prior.prompts, embedder), embed_cached(stream.prompts, embedder)
    same = fit_stream(prior, X_prior, stream, X_stream, costs, "params")
    # vectors that tell no prompt apart: the predictor gives every stream item the same scores, while the
    # classifier, which still reads the hashing vectors, categorises the stream as before
    blank = (np.zeros((len(prior), 8)), np.zeros((len(stream), 8)))
    other = fit_stream(prior, X_prior, stream, X_stream, costs, "params", blank)
    assert np.array_equal(other.stream_category, same.stream_category)
    assert np.ptp(other.predicted, axis=0).max() < 1e-9 < np.ptp(same.predicted, axis=0).max()


def test_bench_adapt_takes_the_predictors_embedder(tmp_path: Path, cache: Path) -> None:
    prior, experts = tmp_path / "prior.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 120)
    experts.write_text(json.dumps({e: {"params_b": b} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}))
    argv = ["bench", "adapt", "--prior", str(prior), "--experts", str(experts), "--budget-params", "3"]
    argv += ["--requests", "600", "--embedder", "hashing"]
    assert main([*argv, "--json", str(tmp_path / "a.json")]) == 0  # the predictor on coserve train's default
    assert main([*argv, "--predictor-embedder", "hashing", "--json", str(tmp_path / "b.json")]) == 0
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert (first["embedder"], first["predictor_embedder"]) == ("hashing", "minilm-static+features")
    assert (second["embedder"], second["predictor_embedder"]) == ("hashing", "hashing")
    assert first["quality"]["static"] == second["quality"]["static"]  # the same classifier and table
    assert first["quality"]["adaptive"] != second["quality"]["adaptive"]  # other predictions, other routes


def test_fit_and_replay_run_on_one_blas_thread(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fitted models change with BLAS's thread count (session 10 found the official figures moved
    between one and two threads), so the fit and the replay pin BLAS to one whatever the caller set."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import coserve.bench.adapt as adapt
    import coserve.eval.train as train

    seen: list[list[int]] = []

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    fit = train.train_router

    def recording_fit(*args: object, **kwargs: object) -> object:
        seen.append(blas_threads())
        return fit(*args, **kwargs)

    class RecordingRouter(adapt.OnlineRouter):
        def __init__(self, *args: object, **kwargs: object) -> None:
            seen.append(blas_threads())
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train, "train_router", recording_fit)
    monkeypatch.setattr(adapt, "OnlineRouter", RecordingRouter)
    prior, experts = tmp_path / "prior.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 120)
    experts.write_text(
        json.dumps(
            {e: {"params_b": b, "input_price": 1, "output_price": 1} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}
        )
    )
    argv = ["bench", "adapt", "--prior", str(prior), "--experts", str(experts), "--budget-params", "3"]
    with threadpool_limits(2, user_api="blas"):
        assert blas_threads() and all(n == 2 for n in blas_threads())  # the caller's setting, outside
        assert main([*argv, "--json", str(tmp_path / "r.json"), "--requests", "600", "--embedder", "hashing"]) == 0
        assert all(n == 2 for n in blas_threads())  # restored after the run
    # two fits (classifier, predictor), the predictor's five cross-fit folds (change_calibration) and the router
    assert len(seen) == 2 + 5 + 1
    assert all(threads and all(n == 1 for n in threads) for threads in seen)


def test_bench_adapt_refuses_bad_rows_or_names_the_rows_it_skips(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bad rows of the prior and the stream were dropped without a word (load_outcomes' problems discarded);
    # then with a warning each while train and eval refused them: now refused too, unless --on-bad skip.
    prior, stream, experts = tmp_path / "prior.jsonl", tmp_path / "stream.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 60)
    _outcomes(stream, 2, 60)
    with prior.open("a") as handle:
        handle.write("{not json\n")
    with stream.open("a") as handle:
        handle.write(json.dumps({"id": "s-x", "prompt": "p", "category": "code", "scores": {"cheap": 1.0}}) + "\n")
    experts.write_text(json.dumps({e: {"params_b": b} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}))
    argv = ["bench", "adapt", "--prior", str(prior), "--stream", str(stream), "--experts", str(experts)]
    argv += ["--budget-params", "3", "--requests", "400", "--embedder", "hashing", "--predictor-embedder", "hashing"]
    assert main([*argv, "--json", str(tmp_path / "refused.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"coserve: error: 1 bad row in {prior}:") and "--on-bad skip" in err
    assert not (tmp_path / "refused.json").exists()
    with caplog.at_level("WARNING", logger="coserve.bench.adapt"):
        assert main([*argv, "--on-bad", "skip", "--json", str(tmp_path / "a.json")]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "coserve.bench.adapt"] == [
        f"skipped {prior}:61: ?: malformed JSON: Expecting property name enclosed in double quotes",
        f"skipped {stream}:61: s-x: missing scores for experts ['mid', 'big']",
    ]


@pytest.mark.parametrize(
    ("knobs", "says"),
    [
        ({"seed": -1}, "seed -1: must be >= 0"),  # was numpy's traceback once the data were read
        ({"target": math.inf}, "target (the budget) inf: must be finite"),
        ({"noise": math.inf}, "noise >= 0"),
    ],
)
def test_bench_adapt_refuses_a_negative_seed_and_infinite_figures(knobs: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        AdaptOptions(**knobs)
    assert says in str(refused.value)


def test_bench_adapt_probes_a_suspect_and_reports_the_share_probed(tmp_path: Path, cache: Path) -> None:
    prior, stream, experts = tmp_path / "prior.jsonl", tmp_path / "stream.jsonl", tmp_path / "experts.json"
    _outcomes(prior, 1, 150)
    _outcomes(stream, 2, 150)
    experts.write_text(
        json.dumps(
            {e: {"params_b": b, "input_price": 1, "output_price": 1} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}
        )
    )
    out = tmp_path / "probe.json"
    argv = ["bench", "adapt", "--prior", str(prior), "--stream", str(stream), "--experts", str(experts)]
    argv += ["--budget-params", "3", "--json", str(out), "--requests", "3000", "--embedder", "hashing"]
    argv += ["--alarm-explore", "0"]  # the collapse guard off: only the probe explores
    assert main([*argv, "--change-probe", "0.25", "--change-probe-requests", "40", "--change-probe-margin", "0.2"]) == 0
    report = json.loads(out.read_text())
    assert report["options"]["change_probe"] == 0.25 and report["options"]["change_probe_requests"] == 40
    # no other exploration is on (explore_cap 0, explore_at_zero and alarm_explore off): every explored request
    # is a probe, and the shocked expert's climbing down side opens at least one episode
    assert report["probed_share"] > 0.0 and report["probed_share"] == report["explored_share"]


def test_recovery_where_the_router_had_already_left_the_shocked_expert() -> None:
    from coserve.bench.adapt_baselines import recovery

    # expert 1 took a third of the pre-shock requests, then none from request 40 after the shock on
    chosen = np.array([0, 1, 2] * 200 + [1] * 40 + [0] * 560)
    # below 10% of 1/3 over the last 500 requests: at most 16 of its 40 left in the window, at request 524
    assert recovery(chosen, shocked=1, shock_at=600, window=500) == 524
    # never picked before the shock (share 0): it has moved away at the floor, not "never"
    left = np.array([0, 2] * 300 + [0] * 600)
    assert recovery(left, shocked=1, shock_at=600, window=500) == 100
    # share 0 before, but sent requests after the shock: not until a window holds none of them
    back = np.array([0, 2] * 300 + [1] * 150 + [0] * 850)
    assert recovery(back, shocked=1, shock_at=600, window=500) == 650
    # a share that never falls: the rest of the run
    stays = np.array([0, 1] * 600)
    assert recovery(stays, shocked=1, shock_at=600, window=500) == 600


def test_the_recovery_criterion_is_flagged_where_the_best_map_after_the_shock_keeps_the_expert() -> None:
    # recovery asks for a share below 10% of the share before the shock
    assert best_map_keeps(0.224, 0.164)  # the official $0.3 run: the best map keeps 16.4% > 2.24%
    assert not best_map_keeps(0.276, 0.0)  # 20 B: the best map drops it, a miss is the router's
    assert not best_map_keeps(0.3, 0.029) and best_map_keeps(0.3, 0.03)  # the line itself
    assert not best_map_keeps(0.0, 0.0)  # never sent before: nothing to keep
