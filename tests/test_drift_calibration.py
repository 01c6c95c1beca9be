"""The change detector's per-cell calibration (coserve.router.drift_calibration, router.online.change_calibration):
exact values on tiny tables, worked out by hand in each test's comments."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from test_online_serving import _engine
from test_trained_routing import trained_dir  # noqa: F401  (a fixture)

from coserve.bench.adapt import AdaptOptions
from coserve.cli import main
from coserve.config_routing import OnlineSettings
from coserve.errors import ConfigError
from coserve.router.drift import ChangeSettings
from coserve.router.drift_calibration import CellCalibration, cell_offsets, picks
from coserve.router.online import OnlineRouter
from coserve.router.online_calibration import PRIOR_FIT_FILE

TRUTH = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
PREDICTED = np.array([[0.8, 0.3], [0.6, 0.5], [0.9, 0.4], [0.2, 0.7]])
CATEGORY = np.array([0, 0, 1, 1])


def test_offsets_are_cell_means_shrunk_toward_the_experts_pooled_mean_and_that_toward_zero() -> None:
    # picked: prompts 0, 1 -> (0, 0): residuals 0.2 and -0.6; prompt 2 -> (1, 0): 0.1; prompt 3 -> (1, 1): -0.7
    found = cell_offsets(TRUTH, PREDICTED, CATEGORY, [np.array([0, 0, 0, 1])], 2, shrink=2.0)
    # pooled: expert 0 (0.2 - 0.6 + 0.1) / (3 + 2) = -0.06; expert 1 -0.7 / (1 + 2) = -0.2333
    assert found.pooled == pytest.approx([-0.06, -0.7 / 3])
    assert found.count.tolist() == [[2.0, 0.0], [1.0, 1.0]]
    # (0, 0): (-0.4 + 2 x -0.06) / 4; (1, 0): (0.1 - 0.12) / 3; (0, 1), no pick: the pooled mean;
    # (1, 1): (-0.7 + 2 x -0.2333) / 3
    expected = [[-0.52 / 4, -0.7 / 3], [-0.02 / 3, (-0.7 - 1.4 / 3) / 3]]
    assert found.offset == pytest.approx(np.array(expected))


def test_each_spend_levels_pick_weighs_one_over_the_levels() -> None:
    # level B sends prompt 0 to expert 1 (residual 0 - 0.3): cell (0, 1) gets -0.3 / 2 with count 1/2
    chosen = [np.array([0, 0, 0, 1]), np.array([1, 0, 0, 1])]
    found = cell_offsets(TRUTH, PREDICTED, CATEGORY, chosen, 2, shrink=2.0)
    assert found.count.tolist() == [[1.5, 0.5], [1.0, 1.0]]
    pooled_1 = (-0.15 - 0.7) / (1.5 + 2)  # expert 1's total over a count of 1.5
    assert found.offset[0, 1] == pytest.approx((-0.15 + 2 * pooled_1) / 2.5)


def test_unmeasured_scores_are_left_out_and_the_offline_table_clips_as_a_cell_does() -> None:
    truth = TRUTH.copy()
    truth[2, 0] = np.nan  # prompt 2's score for expert 0 was never measured: cell (1, 0) holds nothing
    found = cell_offsets(truth, PREDICTED, CATEGORY, [np.array([0, 0, 0, 1])], 2, shrink=2.0)
    assert found.count[1, 0] == 0.0 and found.pooled[0] == pytest.approx(-0.4 / 4)
    # with S = 0.5 everywhere a residual is clip(truth - pred + 0.5, 0, 1) - 0.5: prompt 1's -0.6 reads -0.5
    clipped = cell_offsets(TRUTH, PREDICTED, CATEGORY, [np.array([0, 0, 0, 1])], 2, 2.0, np.full((2, 2), 0.5))
    pooled_0 = (0.2 - 0.5 + 0.1) / 5
    assert clipped.offset[0, 0] == pytest.approx((-0.3 + 2 * pooled_0) / 4)
    with pytest.raises(ValueError, match="shrink"):
        cell_offsets(TRUTH, PREDICTED, CATEGORY, [np.array([0, 0, 0, 1])], 2, shrink=0.0)


def test_picks_are_the_choices_at_the_weights_that_spend_each_level_of_the_target() -> None:
    # costs 1 and 3, target 2: at weight 0 both prompts take expert 1 (cost 3); prompt 1 (gap 0.1) turns
    # cheap first, which spends exactly 2 = 1.0 x the target and under 1.25 x it; 0.8 x (1.6) needs both cheap
    chosen = picks(np.array([[0.5, 0.9], [0.5, 0.6]]), np.array([1.0, 3.0]), 2.0)
    assert [pick.tolist() for pick in chosen] == [[0, 0], [1, 0], [1, 0]]


def test_a_cell_calibration_reads_its_offset_and_a_fading_one_the_share_left_from_the_prior() -> None:
    constant = CellCalibration(np.array([[-0.2]]))
    assert [constant.read(0, 0, total) for total in (50.0, 51.0)] == pytest.approx([-0.2, -0.2])
    fading = CellCalibration(np.array([[-0.2]]), fading=True)
    # the prior's share: 1, then 50 / 51, then 50 / 51 x 51 / 52 = 50 / 52
    assert [fading.read(0, 0, total) for total in (50.0, 51.0, 52.0)] == pytest.approx(
        [-0.2, -0.2 * 50 / 51, -0.2 * 50 / 52]
    )
    for bad in (np.array([-0.2]), np.array([[np.nan]]), np.array([[1.5]])):
        with pytest.raises(ValueError, match="offsets"):
            CellCalibration(bad)


def _router(calibration: CellCalibration | None) -> OnlineRouter:
    change = ChangeSettings(drift=0.05, threshold=100.0)
    router = OnlineRouter(np.array([[0.5, 0.5]]), [1.0, 1.0], 1.0, prior_strength=10.0, max_count=100.0, change=change)
    router.calibration = calibration
    return router


def test_the_detector_reads_each_residual_less_its_cells_offset_and_the_posterior_learns_as_before() -> None:
    plain, cell = _router(None), _router(CellCalibration(np.array([[0.0, -0.2]])))
    fading = _router(CellCalibration(np.array([[0.0, -0.2]]), fading=True))
    for router in (plain, cell, fading):
        router.feedback(0, 1, 0.2)
    assert plain.detector is not None and cell.detector is not None and fading.detector is not None
    # residual 0.2 - 0.5 = -0.3: down = 0.3 - 0.05 without; read as -0.3 + 0.2 = -0.1: down 0.1 - 0.05
    assert plain.detector.stat["down"][1] == pytest.approx(0.25)
    assert cell.detector.stat["down"][1] == pytest.approx(0.05)
    assert fading.detector.stat["down"][1] == pytest.approx(0.05)
    for router in (plain, cell, fading):
        router.feedback(0, 1, 0.2)
    # the cell now holds (5 + 0.2) / 11: residual 0.2 - 5.2 / 11; the fading offset is -0.2 x 10 / 11
    residual = 0.2 - 5.2 / 11
    assert cell.detector.stat["down"][1] == pytest.approx(0.05 - (residual + 0.2) - 0.05)
    assert fading.detector.stat["down"][1] == pytest.approx(0.05 - (residual + 0.2 * 10 / 11) - 0.05)
    assert cell.posterior.mean() == pytest.approx(plain.posterior.mean())  # detection only: routing unchanged


def test_settings_refuse_a_calibration_set_where_it_cannot_act_and_the_default_is_inert_there() -> None:
    assert OnlineSettings().change_calibration == "fading" and OnlineSettings().change_calibration_shrink == 20.0
    assert OnlineSettings().calibrates  # prompt mode, against the posterior, with a detector
    for inert in ({"granularity": "category"}, {"change_baseline": "feedback"}, {"change_threshold": 0}):
        assert not OnlineSettings(**inert).calibrates  # type: ignore[arg-type]
    assert not OnlineSettings(change_calibration="none").calibrates
    for bad in (
        {"change_calibration": "cell", "granularity": "category"},
        {"change_calibration": "fading", "change_baseline": "feedback"},
        {"change_calibration_shrink": 0},
        {"change_calibration": "pooled"},
    ):
        with pytest.raises(ValidationError):
            OnlineSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="granularity prompt"):
        AdaptOptions(change_calibration="cell", granularity="category")
    assert not AdaptOptions(granularity="category").online().calibrates  # the default, inert there


@pytest.mark.usefixtures("trained_dir")
def test_coserve_train_stores_the_prior_fit_and_a_server_calibrates_from_it(tmp_path: Path, cache: Path) -> None:
    stored = tmp_path / "router" / PRIOR_FIT_FILE
    assert stored.exists()  # written by `coserve train` (the fixture) beside manifest.json
    with np.load(stored) as data:
        categories, experts = data["categories"].tolist(), data["experts"].tolist()
        assert data["predicted"].shape == data["truth"].shape == (len(data["category"]), len(experts))
    engine = _engine(tmp_path, cache, online={"granularity": "prompt"})
    assert engine.router.online is not None
    live = engine.router.online
    assert (live.categories, live.experts) == (categories, experts)
    calibration = live.router.calibration
    assert calibration is not None and calibration.fading  # the default
    assert calibration.offset.shape == (len(categories), len(experts))
    # the shares a fading calibration keeps survive a restart through the saved state
    calibration.unlearnt[0, 0] = 0.25
    state = live.export_state()
    calibration.unlearnt[0, 0] = 1.0
    assert live.resume(state) and calibration.unlearnt[0, 0] == 0.25
    assert live.resume({**state, "calibration_unlearnt": [[2.0]]}) and calibration.unlearnt[0, 0] == 0.25


@pytest.mark.usefixtures("trained_dir")
def test_a_server_without_a_usable_prior_fit_warns_and_reads_raw_residuals(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored = tmp_path / "router" / PRIOR_FIT_FILE
    with np.load(stored) as data:
        arrays = {name: data[name] for name in data.files}
    for broken, why in (
        ({**arrays, "experts": np.array(["a", "b", "c"])}, "other categories or experts"),
        ({**arrays, "predicted": arrays["predicted"][:, :1]}, "another shape"),
        (None, "not found"),
    ):
        if broken is None:
            stored.unlink()
        else:
            np.savez(stored, **broken)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="coserve.router"):
            engine = _engine(tmp_path, cache, online={"granularity": "prompt"})
        assert why in caplog.text and "reads raw residuals" in caplog.text
        assert engine.router.online is not None and engine.router.online.router.calibration is None


def _repeated_outcomes(path: Path) -> None:
    """90 rows of three categories, each prompt asked three times (ids differ), 0/1 scores."""
    rng = np.random.default_rng(3)
    words = {"chat": "hello weather friend", "math": "integral sum equation", "code": "python function compile"}
    with path.open("w") as out:
        for i in range(90):
            category = list(words)[i % 3]
            scores = {e: float(rng.random() < 0.6) for e in ("cheap", "mid", "big")}
            prompt = f"{words[category]} item {i // 9}-{i % 3}"  # rows i, i + 3, i + 6 (within 9) share a prompt
            out.write(json.dumps({"id": str(i), "prompt": prompt, "category": category, "scores": scores}) + "\n")


def test_the_cross_fit_predicts_each_prompt_without_its_fold_and_the_bench_reports_the_offsets(
    tmp_path: Path, cache: Path
) -> None:
    from coserve.bench.adapt import fit_stream
    from coserve.eval.data import embed_cached, load_costs, load_outcomes
    from coserve.router.embedders import make_embedder

    _repeated_outcomes(tmp_path / "prior.jsonl")
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps({e: {"params_b": b} for e, b in (("cheap", 1), ("mid", 3), ("big", 9))}))
    prior, _ = load_outcomes(tmp_path / "prior.jsonl")
    X = embed_cached(prior.prompts, make_embedder("hashing"))
    fitted = fit_stream(prior, X, prior, X, load_costs(experts), "params", folds=3)
    assert fitted.prior_fit is not None and fitted.prior_fit.predicted.shape == (90, 3)
    assert np.isfinite(fitted.prior_fit.predicted).all()
    assert fitted.prior_fit.category.tolist() == [fitted.categories.index(c) for c in prior.categories]
    by_prompt: dict[str, list[np.ndarray]] = {}
    for prompt, row in zip(prior.prompts, fitted.prior_fit.predicted, strict=True):
        by_prompt.setdefault(prompt, []).append(row)
    # a repeated prompt stays in one fold: its rows are predicted by one predictor, alike
    assert all(np.allclose(rows[0], other) for rows in by_prompt.values() for other in rows[1:])
    # out of fold: not the in-sample predictions of the predictor fitted on every row
    assert not np.allclose(fitted.prior_fit.predicted, fitted.predicted)
    argv = ["bench", "adapt", "--prior", str(tmp_path / "prior.jsonl"), "--experts", str(experts)]
    argv += ["--budget-params", "3", "--requests", "600", "--embedder", "hashing", "--change-calibration", "cell"]
    assert main([*argv, "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["options"]["change_calibration"] == "cell"
    assert np.asarray(report["calibration_offsets"]).shape == (len(report["categories"]), 3)


def test_a_prior_of_one_category_replays_uncalibrated_with_a_warning(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prior, experts = tmp_path / "prior.jsonl", tmp_path / "experts.json"
    with prior.open("w") as out:  # one category: no classifier, no cross-fit
        for i in range(60):
            out.write(json.dumps({"id": str(i), "prompt": f"sum {i}", "category": "math", "scores": {"a": 1.0}}) + "\n")
    experts.write_text(json.dumps({"a": {"params_b": 1}}))
    argv = ["bench", "adapt", "--prior", str(prior), "--experts", str(experts), "--budget-params", "1"]
    with caplog.at_level(logging.WARNING, logger="coserve.bench.adapt"):
        assert main([*argv, "--requests", "600", "--embedder", "hashing", "--json", str(tmp_path / "r.json")]) == 0
    assert "residuals read uncalibrated" in caplog.text
    assert "calibration_offsets" not in json.loads((tmp_path / "r.json").read_text())
