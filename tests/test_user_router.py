"""coserve eval --routers module:Class: a router of the user's own beside the built-in ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_harness import write_separable

from coserve.cli import main
from coserve.eval.data import load_outcomes
from coserve.eval.user_router import load_user_router
from coserve.router.embed import HashingEmbedder

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_router.py"


def run_eval(data: Path, experts: Path, out: Path, routers: str, *extra: str) -> int:
    flags = ["--data", str(data), "--experts", str(experts), "--embedder", "hashing", "--json", str(out)]
    return main(["eval", *flags, "--routers", routers, *extra])


def split(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The separable file cut in two: 40 rows to fit on, 20 held out (their scores changed, so that a
    figure taken from the training rows would not match)."""
    data, experts = write_separable(tmp_path)
    lines = data.read_text().splitlines()
    test = tmp_path / "test.jsonl"
    held = [json.loads(line) for line in lines[40:]]
    for i, row in enumerate(held):
        row["scores"]["small"] = 0.25 if i % 4 else 1.0
    test.write_text("".join(json.dumps(row) + "\n" for row in held))
    data.write_text("\n".join(lines[:40]) + "\n")
    return data, test, experts


def test_always_cheapest_figures_are_the_cheapest_experts(tmp_path: Path, cache: Path) -> None:
    data, test, experts = split(tmp_path)
    out = tmp_path / "r.json"
    assert run_eval(data, experts, out, f"{EXAMPLE}:AlwaysCheapest,map-logistic", "--test", str(test)) == 0
    report = json.loads(out.read_text())
    assert list(report["routers"]) == ["prompt-cheapest", "map-logistic"]
    held, _ = load_outcomes(test)
    small = float(np.mean(held.scores[:, held.experts.index("small")]))  # 15 x 0.25 + 5 x 1.0 over 20: 0.4375
    assert small == pytest.approx(0.4375)
    points = report["routers"]["prompt-cheapest"]["points"]
    assert len(points) == 2 * 41  # every cost weight on both axes
    for point in points:
        assert point["quality"] == pytest.approx(small, abs=1e-6)
        assert (point["avg_params_b"], point["avg_price"]) == (1.0, 0.1)
    metrics = report["routers"]["prompt-cheapest"]["metrics"]
    # At big's cost (10 B) it still spends 1 B: quality 0.4375; big's own quality is 0.75 on these rows.
    assert metrics["quality_at_best_single_budget"] == pytest.approx(small, abs=1e-6)
    assert metrics["min_budget_for_best_single_quality"] is None
    oracle = report["baselines"]["oracle"]["quality"]
    best = report["baselines"]["big"]["quality"]
    assert metrics["oracle_gap_closed"] == pytest.approx((small - best) / (oracle - best), abs=1e-5)


def test_a_user_classifier_is_scored_like_the_built_in_ones(tmp_path: Path, cache: Path) -> None:
    data, test, experts = split(tmp_path)
    out = tmp_path / "r.json"
    assert run_eval(data, experts, out, f"{EXAMPLE}:NearestCentroid", "--test", str(test)) == 0
    metrics = json.loads(out.read_text())["routers"]["map-centroid"]["metrics"]
    # By hand: the class fitted on the training rows' vectors, its top category on the held-out rows.
    train, _ = load_outcomes(data)
    held, _ = load_outcomes(test)
    embedder = HashingEmbedder()
    centroid = load_user_router(f"{EXAMPLE}:NearestCentroid").cls
    model = centroid().fit(embedder.encode(list(train.prompts)), list(train.categories))
    predicted = model.classes_[model.predict_proba(embedder.encode(list(held.prompts))).argmax(axis=1)]
    assert metrics["category_accuracy"] == pytest.approx(float(np.mean(predicted == np.asarray(held.categories))))
    assert {"auc_params", "auc_price", "ece", "temperature", "oracle_gap_closed"} <= set(metrics)


def test_user_routers_run_in_parallel_folds_alike(tmp_path: Path, cache: Path) -> None:
    data, experts = write_separable(tmp_path)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert run_eval(data, experts, one, f"{EXAMPLE}:NearestCentroid", "--folds", "3") == 0
    assert run_eval(data, experts, two, f"{EXAMPLE}:NearestCentroid", "--folds", "3", "--jobs", "2") == 0
    routers = [json.loads(p.read_text())["routers"] for p in (one, two)]
    assert routers[0] == routers[1]


BAD_ROUTERS = {
    "no_such.py:X": "no such file no_such.py",
    "coserve_no_such_module:X": "cannot import coserve_no_such_module: ModuleNotFoundError: No module named",
    "broken.py:X": "cannot import broken.py: ZeroDivisionError: division by zero",
    "own.py:Missing": "own.py has no class Missing",
    "own.py:Half": "Half has only fit; a quality predictor needs fit and predict",
    "own.py:Knn": "the name prompt-knn is a built-in router's; give the class another name",
    "own.py:Centroid": "map-centroid is a category classifier: needs at least two categories",
    "own.py:Words": """inputs = 'words': "vectors" or "text" (what fit and predict are given)""",
}


@pytest.mark.parametrize("spec", list(BAD_ROUTERS))
def test_a_bad_router_is_refused_in_one_line_before_embedding(
    spec: str, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, experts = write_separable(tmp_path)
    if spec == "own.py:Centroid":  # one category: no category classifier can run
        rows = [json.loads(line) | {"category": "chat"} for line in data.read_text().splitlines()]
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "own.py").write_text(
        "class Half:\n    def fit(self, X, Y):\n        return self\n\n"
        "class Knn:\n    name = 'knn'\n    def fit(self, X, Y):\n        return self\n"
        "    def predict(self, X):\n        return X\n\n"
        "from importlib.util import spec_from_file_location as s\n"
        "from importlib.util import module_from_spec as m\n"
        f"_spec = s('example', {str(EXAMPLE)!r}); _mod = m(_spec); _spec.loader.exec_module(_mod)\n"
        "Centroid = _mod.NearestCentroid\n\n"
        "class Words(_mod.TextStats):\n    inputs = 'words'\n"
    )
    monkeypatch.chdir(tmp_path)
    rc = run_eval(data, experts, tmp_path / "r.json", spec)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"coserve: error: --routers {spec}: {BAD_ROUTERS[spec]}") and err.count("\n") == 1
    assert not (cache / "embeddings").exists() and not (tmp_path / "r.json").exists()


def test_a_predictor_of_the_wrong_shape_is_named(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, experts = write_separable(tmp_path)
    (tmp_path / "wrong.py").write_text(
        "import numpy as np\n\nclass Wrong:\n    def fit(self, X, Y):\n        return self\n"
        "    def predict(self, X):\n        return np.zeros((len(X), 2))\n"
    )
    spec = f"{tmp_path / 'wrong.py'}:Wrong"
    assert run_eval(data, experts, tmp_path / "r.json", spec) == 2
    assert "predict returned shape" in capsys.readouterr().err


RECORDER = """
import json
from pathlib import Path

import numpy as np

LOG = Path(__file__).with_name("calls")


class Texts:
    inputs = "text"

    def fit(self, X, Y):
        self.n_ = Y.shape[1]
        return self._log("fit", X)

    def predict(self, X):
        self._log("predict", X)
        return np.zeros((len(X), self.n_))

    def _log(self, method, X):
        calls = sorted(LOG.glob(type(self).__name__ + "-*"))
        where = LOG / f"{type(self).__name__}-{len(calls):03d}-{method}"
        if isinstance(X, np.ndarray):
            np.save(where.with_suffix(".npy"), X)
        else:
            where.with_suffix(".json").write_text(json.dumps(X))
        return self


class Vectors(Texts):
    inputs = "vectors"
"""


def test_a_class_that_reads_text_gets_the_prompts_of_the_rows_a_vectors_class_gets(tmp_path: Path, cache: Path) -> None:
    data, experts = write_separable(tmp_path)
    (tmp_path / "calls").mkdir()
    (tmp_path / "rec.py").write_text(RECORDER)
    spec = f"{tmp_path / 'rec.py'}"
    assert run_eval(data, experts, tmp_path / "r.json", f"{spec}:Texts,{spec}:Vectors", "--folds", "3") == 0
    texts = sorted((tmp_path / "calls").glob("Texts-*"))
    vectors = sorted((tmp_path / "calls").glob("Vectors-*"))
    assert [p.suffix for p in texts] == [".json"] * 12 and [p.suffix for p in vectors] == [".npy"] * 12
    assert [p.stem.split("-")[2] for p in texts] == ["fit", "predict", "fit", "predict"] * 3  # per fold
    outcomes, _ = load_outcomes(data)
    X = HashingEmbedder().encode(list(outcomes.prompts))
    held_out = []
    for got_texts, got_vectors in zip(texts, vectors, strict=True):
        rows = np.load(got_vectors)
        distance = ((rows[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
        index = distance.argmin(axis=1)
        assert np.allclose(distance.min(axis=1), 0.0)  # each vector is one prompt's
        received = json.loads(got_texts.read_text())
        assert all(isinstance(t, str) for t in received)
        assert received == [outcomes.prompts[i] for i in index]  # the same rows, in the same order
        if int(got_texts.stem.split("-")[1]) % 4 == 1:  # fit, predict held-out, fit inner, predict val
            held_out += list(index)
    assert sorted(held_out) == list(range(len(outcomes)))  # the folds' held-out rows: every row once


def test_a_text_router_beside_the_others_changes_none_of_their_figures(tmp_path: Path, cache: Path) -> None:
    data, test, experts = split(tmp_path)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    others = f"{EXAMPLE}:NearestCentroid,{EXAMPLE}:AlwaysCheapest,prompt-knn"
    assert run_eval(data, experts, one, others, "--test", str(test), "--no-intervals") == 0
    assert run_eval(data, experts, two, f"{EXAMPLE}:TextStats,{others}", "--test", str(test), "--no-intervals") == 0
    before, after = (json.loads(p.read_text())["routers"] for p in (one, two))
    assert after.pop("prompt-textstats")["points"]
    assert after == before


def test_the_text_example_is_scored_on_the_held_out_prompts_texts(tmp_path: Path, cache: Path) -> None:
    data, test, experts = split(tmp_path)
    out = tmp_path / "r.json"
    assert run_eval(data, experts, out, f"{EXAMPLE}:TextStats", "--test", str(test), "--no-intervals") == 0
    points = json.loads(out.read_text())["routers"]["prompt-textstats"]["points"]
    # By hand: fitted on the training prompts' texts; at cost weight 0 each held-out prompt goes to the
    # expert with the best predicted score.
    train, _ = load_outcomes(data)
    held, _ = load_outcomes(test)
    model = load_user_router(f"{EXAMPLE}:TextStats").cls().fit(list(train.prompts), train.scores)
    chosen = model.predict(list(held.prompts)).argmax(axis=1)
    quality = float(np.mean(held.scores[np.arange(len(held)), chosen]))
    free = [p for p in points if p["lam"] == 0.0]
    assert free and all(p["quality"] == pytest.approx(quality, abs=1e-6) for p in free)


def test_a_vectors_class_is_given_what_the_built_in_parts_are(tmp_path: Path, cache: Path) -> None:
    """The built-in kNN predictor under another name, read by the user path, scores as prompt-knn does."""
    data, experts = write_separable(tmp_path)
    (tmp_path / "mine.py").write_text(
        "from coserve.router.predict import KNNRegressor\n\nclass Mine(KNNRegressor):\n    name = 'mine'\n"
    )
    out = tmp_path / "r.json"
    routers = f"{tmp_path / 'mine.py'}:Mine,prompt-knn,{EXAMPLE}:TextStats"
    assert run_eval(data, experts, out, routers, "--folds", "3", "--no-intervals") == 0
    report = json.loads(out.read_text())["routers"]
    assert report["prompt-mine"]["points"] == report["prompt-knn"]["points"]
    assert report["prompt-mine"]["metrics"] == report["prompt-knn"]["metrics"]


@pytest.mark.parametrize("embedder", [["--embedder", "hashing"], []])
def test_routers_that_all_read_text_embed_nothing_and_score_as_beside_a_vectors_router(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, embedder: list[str]
) -> None:
    """With only text routers, neither the named embedder nor the default one (MiniLM, a model load) is used."""
    data, test, experts = split(tmp_path)
    beside = tmp_path / "beside.json"
    assert run_eval(data, experts, beside, f"{EXAMPLE}:TextStats,prompt-knn", "--test", str(test)) == 0

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("nothing should be embedded")

    import coserve.eval.harness
    import coserve.router.embedders

    monkeypatch.setattr(coserve.eval.harness, "embed_cached", refuse)
    monkeypatch.setattr(coserve.router.embedders, "make_embedder", refuse)
    alone = tmp_path / "alone.json"
    flags = ["--data", str(data), "--experts", str(experts), "--json", str(alone), "--test", str(test)]
    assert main(["eval", *flags, *embedder, "--routers", f"{EXAMPLE}:TextStats"]) == 0
    report = json.loads(alone.read_text())
    assert report["meta"]["embedder"] == "none (every router reads the prompts' texts)"
    with_knn = json.loads(beside.read_text())["routers"]["prompt-textstats"]
    assert report["routers"]["prompt-textstats"]["points"] == with_knn["points"]
    with_knn["metrics"].pop("difference_from_reference")  # from prompt-knn, the reference there; none here
    assert report["routers"]["prompt-textstats"]["metrics"] == with_knn["metrics"]
