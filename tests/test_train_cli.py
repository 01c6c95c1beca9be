"""coserve train -> router directory -> load_trained -> expert_for; coserve experts add."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_harness import write_separable

from coserve.cli import main
from coserve.router.embed import HashingEmbedder
from coserve.router.embedders import make_embedder
from coserve.router.features import FEATURE_NAMES
from coserve.router.trained import load_trained


def argv(command: str, data: Path, experts: Path, *extra: str) -> list[str]:
    """``coserve train|eval`` on a small outcome file with the hashing embedder (no model to load)."""
    return [command, "--data", str(data), "--experts", str(experts), "--embedder", "hashing", *extra]


@pytest.fixture
def trained(tmp_path: Path, cache: Path) -> tuple[Path, Path]:
    data, experts = write_separable(tmp_path)
    out = tmp_path / "router"
    rc = main(argv("train", data, experts, "--out", str(out), "--budget-params", "6", "--router", "map-logistic"))
    assert rc == 0
    return out, data


def test_train_writes_a_loadable_router(trained: tuple[Path, Path]) -> None:
    out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "map-logistic"
    assert manifest["map"] == {"chat": "small", "code": "big"}
    assert manifest["budget"] == {"axis": "params", "value": 6.0}
    assert [e["name"] for e in manifest["experts"]] == ["small", "mid", "big"]
    assert {"temperature", "fallback", "categories", "classifier", "hyper"} <= set(manifest)
    with np.load(out / "arrays.npz", allow_pickle=False) as npz:
        assert {"S", "p", "clf/coef_"} <= set(npz.files)
    router = load_trained(out)
    X = HashingEmbedder().encode(["debug this python function loop", "hello friend nice weekend movie"])
    assert router.expert_for(X) == ["big", "small"]
    assert router.category_proba(X).shape == (2, 2)
    assert router.scores(X).shape == (2, 3)
    # a budget that only affords the cheapest expert
    assert router.expert_for(X, budget=1.0) == ["small", "small"]


def test_experts_add_keeps_classifier_and_changes_map(trained: tuple[Path, Path], tmp_path: Path) -> None:
    out, data = trained
    with np.load(out / "arrays.npz", allow_pickle=False) as npz:
        before = {k: npz[k].tobytes() for k in npz.files if k.startswith("clf/")}
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    # "coder" is perfect on code and cheaper than "big": it should take the code category
    new = [{"id": r["id"], "scores": {"coder": 1.0 if r["category"] == "code" else 0.0}} for r in rows]
    outcomes = tmp_path / "coder.jsonl"
    outcomes.write_text("\n".join(json.dumps(r) for r in new) + "\n")
    rc = main(
        ["experts", "add", "--router", str(out), "--name", "coder", "--outcomes", str(outcomes), "--params-b", "3"]
    )
    assert rc == 0
    with np.load(out / "arrays.npz", allow_pickle=False) as npz:
        after = {k: npz[k].tobytes() for k in npz.files if k.startswith("clf/")}
        assert npz["S"].shape == (2, 4)
    assert before == after and before
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["map"] == {"chat": "small", "code": "coder"}
    X = HashingEmbedder().encode(["debug this python function loop"])
    assert load_trained(out).expert_for(X) == ["coder"]


def test_experts_add_removes_the_calibration_made_for_the_old_experts(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """``coserve train``'s calibration.npz holds out-of-fold predictions for the trained experts; carried
    over by ``experts add``, the server warned at start that it was for other experts."""
    from coserve.config_routing import OnlineSettings
    from coserve.router.online_calibration import served_calibration

    out, data = trained
    assert (out / "calibration.npz").exists()  # train wrote it
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    outcomes = tmp_path / "coder.jsonl"
    outcomes.write_text("".join(json.dumps({"id": r["id"], "scores": {"coder": 1.0}}) + "\n" for r in rows))
    capsys.readouterr()
    add = ["experts", "add", "--router", str(out), "--name", "coder", "--outcomes", str(outcomes), "--params-b", "3"]
    assert main(add) == 0
    assert not (out / "calibration.npz").exists()
    assert "removed calibration.npz (the change detector's calibration" in capsys.readouterr().out
    router = load_trained(out)
    settings = OnlineSettings(granularity="prompt", change_baseline="posterior", change_threshold=5.0)
    n = len(router.experts)
    found = served_calibration(out, settings, np.zeros((2, n)), np.ones(n), 3.0, router.classes, router.experts)
    assert found is None
    assert "coserve experts add" in caplog.text and "other categories or experts" not in caplog.text


def test_a_failed_experts_add_leaves_the_old_router_whole(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The save writes arrays.npz, then manifest.json: a failure between them (a full disk, a kill) left
    the new arrays (one expert more) beside the old manifest, a router that no longer loaded."""
    import types

    from coserve.router import trained as trained_module

    out, data = trained
    (out / "calibration.npz").write_bytes(b"the prior fit")  # a file of the router's that add does not write
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    outcomes = tmp_path / "coder.jsonl"
    outcomes.write_text("".join(json.dumps({"id": r["id"], "scores": {"coder": 1.0}}) + "\n" for r in rows))
    add = ["experts", "add", "--router", str(out), "--name", "coder", "--outcomes", str(outcomes), "--params-b", "3"]
    siblings = {p.name for p in out.parent.iterdir()}

    def full_disk(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trained_module, "json", types.SimpleNamespace(dumps=full_disk, loads=json.loads))
    assert main(add) == 1  # one line on stderr, not a traceback
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert {p.name for p in out.parent.iterdir()} == siblings  # no staging folder left behind
    monkeypatch.undo()
    assert main(add) == 0  # then it succeeds, keeping the router's other files but the calibration
    assert {p.name for p in out.iterdir()} == set(before) - {"calibration.npz"}
    assert [e["name"] for e in json.loads((out / "manifest.json").read_text())["experts"]][-1] == "coder"


def test_train_defaults_to_the_stack_router(tmp_path: Path, cache: Path) -> None:
    data, experts = write_separable(tmp_path)
    out = tmp_path / "stack"
    assert main(argv("train", data, experts, "--out", str(out), "--embedder", "hashing+features")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "stack"
    assert manifest["predictor"]["name"] == "ridge" and manifest["classifier"]["name"] == "logistic"
    assert manifest["hyper"]["embedder"] == "hashing+features"
    router = load_trained(out)
    embedder = make_embedder("hashing+features")
    X = embedder.encode(["debug this python function loop", "hello friend nice weekend movie"])
    assert X.shape == (2, 256 + len(FEATURE_NAMES))
    # the default budget is the dearest expert's: each prompt goes to the expert perfect on its category
    assert router.expert_for(X) == ["big", "small"]
    assert router.expert_for(X, budget=1.0) == ["small", "small"]


def test_train_without_embedder_uses_the_router_kinds_default(tmp_path: Path) -> None:
    from coserve.cli.train import default_embedder

    assert default_embedder(None) == default_embedder("stack") == "minilm-static+features"
    assert default_embedder("hybrid") == default_embedder("map-logistic") == "minilm"


def test_prompt_and_hybrid_routers_train(tmp_path: Path, cache: Path) -> None:
    data, experts = write_separable(tmp_path)
    for kind in ("prompt-knn", "hybrid"):
        out = tmp_path / kind
        assert main(argv("train", data, experts, "--out", str(out), "--router", kind)) == 0
        router = load_trained(out)
        X = HashingEmbedder().encode(["debug this python function loop", "hello friend nice weekend movie"])
        assert router.expert_for(X) == ["big", "small"]


def test_eval_command_writes_report_and_plot(tmp_path: Path, cache: Path) -> None:
    data, experts = write_separable(tmp_path)
    report, plot = tmp_path / "r.json", tmp_path / "p.png"
    routers = ("--routers", "map-logistic,prompt-knn")
    rc = main(argv("eval", data, experts, "--folds", "3", "--json", str(report), "--plot", str(plot), *routers))
    assert rc == 0
    assert set(json.loads(report.read_text())["routers"]) == {"map-logistic", "prompt-knn"}
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_bad_rows_refused_by_default(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, experts = write_separable(tmp_path)
    with data.open("a") as handle:
        handle.write('{"id": "broken"\n')
    rc = main(argv("eval", data, experts, "--json", str(tmp_path / "r.json")))
    assert rc == 2
    assert "outcomes.jsonl:61" in capsys.readouterr().err


def test_eval_scores_each_router_on_the_vectors_train_fits_it_on(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``--embedder`` the stack router reads its own vectors (train's default) and the others
    theirs; the merged report equals the two runs made one embedder at a time."""
    data, experts = write_separable(tmp_path)
    defaults = {"stack": "hashing+features"}
    monkeypatch.setattr("coserve.cli.train.default_embedder", lambda router: defaults.get(router, "hashing"))
    common = ["--data", str(data), "--experts", str(experts), "--folds", "3"]
    merged, alone_stack, alone_map = (tmp_path / n for n in ("merged.json", "stack.json", "map.json"))
    assert main(["eval", *common, "--routers", "map-logistic,stack", "--json", str(merged)]) == 0
    assert (
        main(["eval", *common, "--routers", "stack", "--embedder", "hashing+features", "--json", str(alone_stack)]) == 0
    )
    assert main(["eval", *common, "--routers", "map-logistic", "--embedder", "hashing", "--json", str(alone_map)]) == 0
    report = json.loads(merged.read_text())
    assert report["meta"]["embedders"] == {"map-logistic": "hashing", "stack": "hashing+features"}
    assert report["meta"]["embedder"] == "per router (meta.embedders)"
    # the differences from the reference router are taken across the groups, of the same resamples
    assert report["meta"]["reference"] == "map-logistic"
    assert report["routers"]["stack"]["metrics"]["difference_from_reference"]["router"] == "map-logistic"
    for name, alone in (("stack", alone_stack), ("map-logistic", alone_map)):
        single = json.loads(alone.read_text())
        for one in (report, single):  # (alone, each router is its own reference)
            del one["routers"][name]["metrics"]["difference_from_reference"]
        assert report["routers"][name] == single["routers"][name]
        assert report["baselines"] == single["baselines"]
    # an explicit --embedder still gives every router the same vectors
    assert json.loads(alone_stack.read_text())["meta"]["embedder"] == "hashing+features"


def test_a_csv_without_score_columns_is_refused_in_one_line(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Columns named after the experts but without the "score:" prefix: eval was a ValueError traceback
    # ("attempt to get argmax of an empty sequence"), train another ("zero-size array to reduction").
    _, experts = write_separable(tmp_path)
    data = tmp_path / "outcomes.csv"
    data.write_text("id,prompt,category,small,big\nr0,hello there,chat,1,0\nr1,def f(): pass,code,0,1\n")
    for command, out in (("eval", "--json"), ("train", "--out")):
        assert main(argv(command, data, experts, out, str(tmp_path / "written"))) == 2
        assert capsys.readouterr().err == (
            f"coserve: error: {data}: no expert scores "
            "(a JSONL row needs scores: {expert: score}, a CSV file score:<expert> columns)\n"
        )
    assert not (tmp_path / "written").exists()


def test_outcomes_of_one_expert_are_refused(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A CSV that lost one of its two score columns was evaluated as a "router" over one expert.
    _, experts = write_separable(tmp_path)
    data = tmp_path / "outcomes.csv"
    data.write_text("id,prompt,category,score:small\nr0,hello there,chat,1\nr1,def f(): pass,code,0\n")
    for command, out in (("eval", "--json"), ("train", "--out")):
        assert main(argv(command, data, experts, out, str(tmp_path / "written"))) == 2
        assert (
            capsys.readouterr().err
            == f"coserve: error: {data}: scores of ['small'] only; a router needs two experts or more\n"
        )
    assert not (tmp_path / "written").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # a negative size was taken: the new expert won a category as the cheapest one
        (["--params-b", "-3"], "--params-b -3.0: the expert's active parameters must be a positive number"),
        (["--params-b", "nan"], "--params-b nan: the expert's active parameters must be a positive number"),
        (["--params-b", "3", "--price", "-0.5"], "--price -0.5: the expert's price must be 0 or more"),
    ],
)
def test_experts_add_refuses_a_cost_below_zero(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out, data = trained
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    outcomes = tmp_path / "coder.jsonl"
    ids = [json.loads(line)["id"] for line in data.read_text().splitlines()]
    outcomes.write_text("".join(json.dumps({"id": i, "scores": {"coder": 1.0}}) + "\n" for i in ids))
    assert main(["experts", "add", "--router", str(out), "--name", "coder", "--outcomes", str(outcomes), *flags]) == 2
    assert capsys.readouterr().err == f"coserve: error: {message}\n"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_experts_add_names_the_experts_a_file_scores(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A name the file does not score listed its first 20 rows, each "no valid score of 'coderx'".
    out, _ = trained
    outcomes = tmp_path / "coder.jsonl"
    outcomes.write_text("".join(json.dumps({"id": f"r{i}", "scores": {"coder": 1.0}}) + "\n" for i in range(30)))
    argv = ["experts", "add", "--router", str(out), "--name", "coderx", "--outcomes", str(outcomes), "--params-b", "3"]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"coserve: error: {outcomes}: no row scores 'coderx'; the file scores ['coder']\n"


def test_an_unknown_router_name_is_refused_before_embedding(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was found after every prompt had been embedded (MiniLM: minutes on llmrouter), and the message
    # ended in "missing: {}".
    data, experts = write_separable(tmp_path)
    rc = main(argv("eval", data, experts, "--json", str(tmp_path / "r.json"), "--routers", "stack,map-logistc"))
    assert rc == 2
    available = "map-knn, map-logistic, map-mlp, map-logistic+fallback, prompt-knn, prompt-mf, prompt-mlp, prompt-ridge"
    assert capsys.readouterr().err == (
        f"coserve: error: --routers: map-logistc not available; available: {available}, hybrid, top2, stack\n"
    )
    assert not (cache / "embeddings").exists() and not (tmp_path / "r.json").exists()


def test_cascade_on_data_without_signals_is_refused_before_the_evaluation(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --cascade (its rows and its library) was read after every router had been evaluated (minutes on
    # llmrouter), then refused.
    data, experts = write_separable(tmp_path)
    missing = tmp_path / "cascade.yaml"
    rc = main(argv("eval", data, experts, "--json", str(tmp_path / "r.json"), "--cascade", str(missing)))
    assert rc == 2
    assert (
        capsys.readouterr().err == f"coserve: error: no row with signals in {data}: write them with coserve outcomes\n"
    )
    assert not (cache / "embeddings").exists() and not (tmp_path / "r.json").exists()
