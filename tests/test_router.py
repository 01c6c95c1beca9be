"""Embedder, classifier and CoERouter: routing quality on the small library, persistence, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HELD_OUT, write_library

from coserve.config import LibraryConfig, load_library
from coserve.errors import ConfigError, NotFound
from coserve.router.classify import LogisticClassifier, make_classifier
from coserve.router.embed import HashingEmbedder
from coserve.router.embedders import make_embedder
from coserve.router.router import CACHE_FORMAT_VERSION, CoERouter
from coserve.types import Constraints, Message, Request


@pytest.fixture
def library(library_path: Path) -> LibraryConfig:
    return load_library(library_path)


@pytest.fixture
def fitted(library: LibraryConfig) -> CoERouter:
    return CoERouter(library, HashingEmbedder()).fit()


def _request(text: str, model: str = "coserve", **constraints: object) -> Request:
    return Request((Message("user", text),), model, constraints=Constraints(**constraints))  # type: ignore[arg-type]


# -- HashingEmbedder ------------------------------------------------------------------------------


def test_hashing_embedder_returns_unit_vectors() -> None:
    embedder = HashingEmbedder(dim=64)
    texts = ["hello world", "Write a Python function", "", "!!!", "a a a a b"]
    vectors = embedder.encode(texts)
    assert vectors.shape == (len(texts), 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


def test_hashing_embedder_is_deterministic_and_case_insensitive() -> None:
    a = HashingEmbedder().encode(["Sort a list in Python", "tell me a joke"])
    b = HashingEmbedder().encode(["sort a LIST in python", "tell me a joke"])
    np.testing.assert_array_equal(a, b)


def test_hashing_embedder_separates_different_texts() -> None:
    a, b, c = HashingEmbedder().encode(["python function code", "python function code bug", "good morning friend"])
    assert float(a @ b) > 0.5
    assert float(a @ c) < float(a @ b)


def test_make_embedder() -> None:
    assert isinstance(make_embedder("hashing"), HashingEmbedder)
    with pytest.raises(ConfigError):
        make_embedder("word2vec")


# -- LogisticClassifier ---------------------------------------------------------------------------


def _blobs(n_classes: int = 3, per_class: int = 20, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    names = ["zeta", "alpha", "mid", "beta"][:n_classes]  # unsorted on purpose
    X = np.concatenate([rng.normal(loc=3 * i, scale=0.5, size=(per_class, dim)) for i in range(n_classes)])
    y = np.repeat(names, per_class)
    return X.astype(np.float32), y


def test_classifier_follows_the_estimator_contract() -> None:
    X, y = _blobs()
    model = LogisticClassifier(C=5.0)
    assert not hasattr(model, "classes_")  # learned attributes exist only after fit
    assert model.fit(X, y) is model
    assert model.classes_.tolist() == sorted(set(y.tolist()))
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # columns follow classes_: each row's argmax column is its label
    assert (model.classes_[proba.argmax(axis=1)] == y).all()
    assert (model.predict(X) == y).all()


def test_classifier_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    for n_classes in (2, 3):
        X, y = _blobs(n_classes=n_classes)
        ours = LogisticClassifier(C=1.0).fit(X, y)
        theirs = LogisticRegression(C=1.0, max_iter=2000).fit(X, y)
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-4)


def test_classifier_state_round_trip() -> None:
    X, y = _blobs()
    model = LogisticClassifier(C=3.0, temperature=1.7).fit(X, y)
    params, arrays = model.get_state()
    json.dumps(params)  # hyper-parameters are plain JSON
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    clone = LogisticClassifier.from_state(params, arrays)
    assert (clone.C, clone.max_iter, clone.temperature) == (3.0, model.max_iter, 1.7)
    assert clone.classes_.tolist() == model.classes_.tolist()
    np.testing.assert_array_equal(clone.predict_proba(X), model.predict_proba(X))


def test_classifier_temperature_softens() -> None:
    X, y = _blobs()
    sharp = LogisticClassifier(temperature=1.0).fit(X, y)
    params, arrays = sharp.get_state()
    soft = LogisticClassifier.from_state({**params, "temperature": 4.0}, arrays)
    assert soft.predict_proba(X).max(axis=1).mean() < sharp.predict_proba(X).max(axis=1).mean()


def test_classifier_needs_two_classes() -> None:
    X, _ = _blobs()
    with pytest.raises(ConfigError):
        LogisticClassifier().fit(X, ["only"] * len(X))


def test_make_classifier() -> None:
    assert isinstance(make_classifier("logistic"), LogisticClassifier)
    with pytest.raises(ConfigError):
        make_classifier("forest")


# -- CoERouter ------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", sorted(HELD_OUT))
def test_router_routes_held_out_prompts(fitted: CoERouter, category: str) -> None:
    (probabilities,) = fitted.probabilities([HELD_OUT[category]])
    assert set(probabilities) == {"code", "math", "chat"}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(probabilities, key=probabilities.__getitem__) == category
    decision = fitted.route(_request(HELD_OUT[category]))
    assert decision.category == category
    assert decision.expert == fitted.library.router.map[category]
    assert decision.reason == "routed"


def test_router_embeds_the_last_user_turn(fitted: CoERouter) -> None:
    request = Request(
        (
            Message("system", "you are a helpful assistant"),
            Message("user", HELD_OUT["math"]),
            Message("assistant", "x equals 2"),
            Message("user", HELD_OUT["code"]),
        ),
        "coserve",
    )
    assert fitted.route(request).category == "code"


def test_router_pinned_request_skips_the_classifier(library: LibraryConfig) -> None:
    router = CoERouter(library, HashingEmbedder())  # not fitted: a pinned request must not need it
    decision = router.route(_request(HELD_OUT["code"], model="small"))
    assert (decision.expert, decision.reason, decision.category) == ("small", "pinned", None)
    with pytest.raises(NotFound):
        router.route(_request("hi", model="gpt-4"))


def test_router_applies_constraints(fitted: CoERouter) -> None:
    decision = fitted.route(_request(HELD_OUT["code"], exclude_experts=("coder",)))
    assert decision.category == "code"
    assert decision.expert != "coder"
    assert decision.reason == "constrained"


def test_unfitted_router_refuses_to_route(library: LibraryConfig) -> None:
    with pytest.raises(RuntimeError):
        CoERouter(library, HashingEmbedder()).probabilities(["hello"])


def test_save_and_load_round_trip(fitted: CoERouter, library: LibraryConfig, tmp_path: Path) -> None:
    directory = tmp_path / "router"
    fitted.save(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["arrays.npz", "manifest.json"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format_version"] == CACHE_FORMAT_VERSION
    assert manifest["library_hash"] == library.content_hash
    assert manifest["embedder"] == "hashing"
    with np.load(directory / "arrays.npz", allow_pickle=False) as data:
        assert set(data.files) == {"classes_", "coef_", "intercept_"}
        assert data["classes_"].tolist() == ["chat", "code", "math"]
    loaded = CoERouter.load(directory, library, HashingEmbedder())
    texts = list(HELD_OUT.values())
    assert loaded.probabilities(texts) == fitted.probabilities(texts)
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary folder was moved into place


def test_save_overwrites_an_existing_directory(fitted: CoERouter, tmp_path: Path) -> None:
    directory = tmp_path / "router"
    directory.mkdir()
    (directory / "stale.txt").write_text("old")
    fitted.save(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["arrays.npz", "manifest.json"]


def test_load_refuses_a_router_of_another_library(fitted: CoERouter, tmp_path: Path) -> None:
    fitted.save(tmp_path / "router")
    (tmp_path / "other").mkdir()
    other = load_library(write_library(tmp_path / "other", fields={"big": {"params_b": 2.0}}))
    with pytest.raises(ConfigError) as info:
        CoERouter.load(tmp_path / "router", other, HashingEmbedder())
    assert "another version of the library" in info.value.message


def test_load_refuses_another_embedder(fitted: CoERouter, library: LibraryConfig, tmp_path: Path) -> None:
    fitted.save(tmp_path / "router")

    class OtherEmbedder(HashingEmbedder):
        name = "other"

    with pytest.raises(ConfigError):
        CoERouter.load(tmp_path / "router", library, OtherEmbedder())


def test_load_refuses_another_embedding_dimension(library: LibraryConfig, tmp_path: Path) -> None:
    CoERouter(library, HashingEmbedder(dim=64)).fit().save(tmp_path / "router")
    with pytest.raises(ConfigError):
        CoERouter.load(tmp_path / "router", library, HashingEmbedder(dim=128))


def test_load_or_fit_follows_the_embedding_dimension(library: LibraryConfig, cache: Path) -> None:
    CoERouter.load_or_fit(library, cache, HashingEmbedder(dim=64))
    router = CoERouter.load_or_fit(library, cache, HashingEmbedder(dim=128))
    assert router.route(_request(HELD_OUT["code"])).category == "code"


def test_load_refuses_damaged_or_foreign_directories(fitted: CoERouter, library: LibraryConfig, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CoERouter.load(tmp_path / "absent", library, HashingEmbedder())
    directory = tmp_path / "router"
    fitted.save(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "format_version": CACHE_FORMAT_VERSION + 1}))
    with pytest.raises(ConfigError):
        CoERouter.load(directory, library, HashingEmbedder())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "classifier": "forest"}))
    with pytest.raises(ConfigError):
        CoERouter.load(directory, library, HashingEmbedder())
    (directory / "manifest.json").write_text(json.dumps(manifest))
    np.savez(directory / "arrays.npz", classes_=np.array([{"a": 1}], dtype=object))  # a pickled array
    with pytest.raises(ConfigError):
        CoERouter.load(directory, library, HashingEmbedder())


def _count_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = CoERouter.fit

    def counting_fit(self: CoERouter) -> CoERouter:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(CoERouter, "fit", counting_fit)
    return calls


def test_load_or_fit_reuses_the_cache(library: LibraryConfig, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_fits(monkeypatch)
    first = CoERouter.load_or_fit(library, cache, HashingEmbedder())
    assert len(calls) == 1
    directory = cache / "routers" / first.cache_key()
    assert (directory / "manifest.json").is_file()
    second = CoERouter.load_or_fit(load_library(library.path), cache, HashingEmbedder())
    assert len(calls) == 1
    texts = list(HELD_OUT.values())
    assert second.probabilities(texts) == first.probabilities(texts)


def test_load_or_fit_builds_the_library_embedder(
    library: LibraryConfig, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = CoERouter.load_or_fit(library, cache)  # the library names embedder: hashing
    assert isinstance(router.embedder, HashingEmbedder)


def test_load_or_fit_retrains_after_the_library_changes(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_fits(monkeypatch)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    v1 = load_library(write_library(tmp_path / "v1"))
    v2 = load_library(write_library(tmp_path / "v2", fields={"small": {"params_b": 0.2}}))
    first = CoERouter.load_or_fit(v1, cache, HashingEmbedder())
    second = CoERouter.load_or_fit(v2, cache, HashingEmbedder())
    assert len(calls) == 2
    assert first.cache_key() != second.cache_key()
    assert len(list((cache / "routers").iterdir())) == 2
    CoERouter.load_or_fit(v1, cache, HashingEmbedder())
    CoERouter.load_or_fit(v2, cache, HashingEmbedder())
    assert len(calls) == 2


def test_load_or_fit_retrains_over_a_damaged_cache(
    library: LibraryConfig, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_fits(monkeypatch)
    router = CoERouter.load_or_fit(library, cache, HashingEmbedder())
    directory = cache / "routers" / router.cache_key()
    (directory / "arrays.npz").write_bytes(b"not a zip file")
    again = CoERouter.load_or_fit(library, cache, HashingEmbedder())
    assert len(calls) == 2
    assert again.route(_request(HELD_OUT["math"])).category == "math"
    with np.load(directory / "arrays.npz", allow_pickle=False) as data:  # rewritten
        assert "coef_" in data.files
