"""A router researcher's own files through the CLI: ``train``, ``eval``, ``map``, ``experts``, ``compare``
and a library naming a trained router. Each mistake is one line with exit status 2, and nothing is
written; each file that is right is read as the docs say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_eval_harness import write_separable
from test_train_cli import argv

from coserve.cli import main


def _library(tmp_path: Path, trained: str, experts: tuple[str, ...] = ("small", "mid", "big")) -> Path:
    """A library of fake experts whose router is the trained one at ``trained`` (relative to it)."""
    lines = ["experts:"]
    lines += [f"  - {{name: {name}, backend: fake, params_b: 1.0}}" for name in experts]
    lines += ["router:", f"  trained: {trained}", f"  fallback: {{expert: {experts[-1]}, min_confidence: 0.3}}"]
    path = tmp_path / "lib.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _routed(tmp_path: Path, latency: bool) -> Path:
    """A ``coserve outcomes --routed`` file written by hand: ``routed`` always chose ``mid``."""
    rows = []
    for i, category in enumerate(["chat", "code"] * 3):
        scores = {"small": float(category == "chat"), "mid": 0.5, "big": 1.0, "routed": 0.5}
        probabilities = {c: 0.9 if c == category else 0.1 for c in ("chat", "code")}
        row = {"id": f"r{i}", "category": category, "scores": scores, "routed_expert": "mid"}
        row["router"] = {"probabilities": probabilities}  # what --single recomputes a decision from
        if latency:
            row["latency_s"] = {name: 2.0 for name in scores}
        rows.append(row)
    path = tmp_path / "routed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _compare_library(tmp_path: Path) -> Path:
    path = tmp_path / "hand.yaml"
    path.write_text(
        "experts:\n"
        + "".join(
            f"  - {{name: {n}, backend: fake, params_b: {b}}}\n" for n, b in (("small", 1), ("mid", 5), ("big", 10))
        )
        + "categories:\n"
        + "".join(f"  {c}: {{description: {c}, examples: [{c} one, {c} two]}}\n" for c in ("chat", "code"))
        + "router:\n  map: {chat: small, code: big}\n  fallback: {expert: big, min_confidence: 0.3}\n"
    )
    return path


def test_a_csv_with_a_column_twice_is_refused(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Two sheets pasted side by side: csv kept the last `score:mid` and trained on it, silently.
    _, experts = write_separable(tmp_path)
    data = tmp_path / "outcomes.csv"
    body = "".join(f"r{i},prompt number {i},{'code' if i % 2 else 'chat'},1,0.5,0,0\n" for i in range(20))
    data.write_text("id,prompt,category,score:small,score:mid,score:big,score:mid\n" + body)
    assert main(argv("train", data, experts, "--out", str(tmp_path / "router"))) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: {data}:1: column 'score:mid' appears twice in the header; keep one\n"
    )
    assert not (tmp_path / "router").exists()


@pytest.mark.parametrize("flag", ["--budget-params", "--budget-price"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_train_refuses_a_budget_that_is_not_finite(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    # nan was taken: every comparison with it is false, so the map sent everything to the cheapest
    # expert and manifest.json held NaN (not JSON); inf wrote Infinity.
    data, experts = write_separable(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv("train", data, experts, "--out", str(tmp_path / "router"), f"{flag}={value}"))
    assert stop.value.code == 2
    assert f"argument {flag}: {value} is not a finite number" in capsys.readouterr().err
    assert not (tmp_path / "router").exists()


def test_map_refuses_a_budget_that_is_not_finite(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["map", "--budget", "nan"])
    assert stop.value.code == 2
    assert "argument --budget: nan is not a finite number" in capsys.readouterr().err


@pytest.fixture
def trained(tmp_path: Path, cache: Path) -> Path:
    data, experts = write_separable(tmp_path)
    out = tmp_path / "router"
    assert main(argv("train", data, experts, "--out", str(out), "--router", "map-logistic")) == 0
    return out


def test_experts_lists_the_categories_a_trained_router_sends_each_expert(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The categories column was empty: it read router.map, which a trained library leaves out.
    library = _library(tmp_path, "router")
    capsys.readouterr()
    assert main(["experts", "--library", str(library), "--json"]) == 0
    listed = {e["name"]: e["categories"] for e in json.loads(capsys.readouterr().out)["experts"]}
    assert listed == {"small": ["chat"], "mid": [], "big": ["code"]}


def test_a_missing_trained_router_names_the_library_and_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The error named the folder only; `coserve experts` listed the library as if it were whole.
    library = _library(tmp_path, "nowhere")
    for command in (["route", "hello"], ["experts"]):
        assert main([command[0], "--library", str(library), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"coserve: error: {library}: router.trained: {tmp_path / 'nowhere'}: ")
        assert err.count("\n") == 1


def test_map_on_a_trained_library_says_where_its_map_comes_from(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "this library writes router.map by hand" of a library with no router.map.
    library = _library(tmp_path, "router")
    assert main(["map", "--library", str(library)]) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: {library}: this library takes its map from a trained router (router.trained): "
        "coserve map needs router.outcomes\n"
    )


def test_compare_reads_a_file_without_latencies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A KeyError traceback ('latency_s') on a file a researcher wrote, or another tool did.
    library, report = _compare_library(tmp_path), tmp_path / "compare.json"
    capsys.readouterr()
    args = ["compare", "--library", str(library), "--data", str(_routed(tmp_path, latency=False))]
    assert main([*args, "--single", str(library), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert {c: e["avg_latency_s"] for c, e in result["columns"].items()} == dict.fromkeys(
        ["small", "mid", "big", "routed", "single"]
    )
    assert result["columns"]["single"]["quality"] == 1.0  # chat -> small, code -> big: both right
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["small", "0.500", "1.000", "-"]
    assert main(["compare", "--library", str(library), "--data", str(_routed(tmp_path, latency=True))]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["small", "0.500", "1.000", "2.00"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"scores": {"small": "x", "routed": 1.0}}, "score of 'small' is not a number in [0, 1]: 'x'"),
        ({"scores": {"small": 5, "routed": 1.0}}, "score of 'small' is not a number in [0, 1]: 5"),
        ({"scores": [1, 0]}, "scores: not an object of expert -> score"),
        ({"category": None}, "no category (a string)"),
    ],
)
def test_compare_refuses_a_bad_row_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, reason: str
) -> None:
    # A string score was a ValueError traceback, a missing category a KeyError; a score of 5 was averaged.
    data = _routed(tmp_path, latency=True)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[2].update(change)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "compare.json"
    assert (
        main(["compare", "--library", str(_compare_library(tmp_path)), "--data", str(data), "--json", str(report)]) == 2
    )
    assert capsys.readouterr().err == f"coserve: error: {data}:3: {reason}\n"
    assert not report.exists()


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_a_json_path_that_is_a_folder_is_refused_before_the_work(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # eval ran every router, then stopped with "Is a directory" (exit 1); compare the same after its table.
    data, experts = write_separable(tmp_path)
    folder = tmp_path / "reports"
    folder.mkdir()
    if command == "eval":
        args = argv("eval", data, experts, "--json", str(folder))
    else:
        args = ["compare", "--library", str(_compare_library(tmp_path)), "--data", str(_routed(tmp_path, True))]
        args += ["--json", str(folder)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == f"coserve: error: --json {folder}: a folder; name a file in it\n"
    assert captured.out == ""  # no work done (eval prints its tables, compare its comparison)
    assert list(folder.iterdir()) == []


def test_experts_add_notes_a_name_no_server_takes(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # coserve train notes such names in its data; experts add took one silently, and the library naming the
    # router was then refused at start.
    ids = [json.loads(line)["id"] for line in (tmp_path / "outcomes.jsonl").read_text().splitlines()]
    scores = tmp_path / "new.jsonl"
    scores.write_text("".join(json.dumps({"id": i, "scores": {"new model": 1.0}}) + "\n" for i in ids))
    capsys.readouterr()
    args = ["experts", "add", "--router", str(trained), "--name", "new model", "--outcomes", str(scores)]
    assert main([*args, "--params-b", "2"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("coserve: note: --name: 'new model' is not a valid expert name")
    assert err.endswith("a server refuses this router until it is renamed\n")


def test_eval_notes_test_categories_the_training_data_lacks(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A held-out file with a category --data lacks was scored without a word: its prompts counted as
    # classifier misses in category_accuracy.
    data, experts = write_separable(tmp_path)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(dict(r, id=f"t{i}", category="legal")) + "\n" for i, r in enumerate(rows[:6])))
    report = tmp_path / "report.json"
    args = argv("eval", data, experts, "--test", str(test), "--json", str(report), "--routers", "map-logistic")
    assert main(args) == 0
    assert f"coserve: note: {test}: categories ['legal'] are not in {data}: category_accuracy counts" in (
        capsys.readouterr().err
    )
    assert json.loads(report.read_text())["routers"]["map-logistic"]["metrics"]["category_accuracy"] == 0.0


def test_a_hand_written_map_beside_a_trained_router_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The map was ignored without a word: the trained router's own map routed every request.
    library = _library(tmp_path, "router")
    text = library.read_text().replace("router:\n", "router:\n  map: {chat: big, code: small}\n")
    library.write_text(text)
    assert main(["route", "--library", str(library), "hello friend"]) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: {library}: router.map: a trained router brings its own map (router.trained); "
        "drop router.map\n"
    )


def test_train_names_the_out_folder_it_cannot_write(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder on --out's path that is a file was found only after training; an OS error named the hidden
    # staging folder (.router.partial-PID) instead of --out.
    data, experts = write_separable(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(argv("train", data, experts, "--out", str(tmp_path / "afile" / "router"))) == 2
    assert (
        capsys.readouterr().err
        == f"coserve: error: --out {tmp_path / 'afile' / 'router'}: {tmp_path / 'afile'} is not a folder\n"
    )

    mkdir = Path.mkdir

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:  # the staging folder beside --out
        if ".partial-" in self.name:
            raise PermissionError(13, "Permission denied", str(self))
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)  # a folder the process may not write (tests may run as root)
    out = tmp_path / "router"
    assert main(argv("train", data, experts, "--out", str(out))) == 1
    assert capsys.readouterr().err.endswith(f"\ncoserve: error: Permission denied: {out}\n")  # after training
    assert not out.exists() and not list(tmp_path.glob(".router.*"))


def test_experts_lists_no_categories_for_a_per_prompt_router(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A prompt-* router chooses per prompt; the category map its manifest keeps decides nothing.
    data, experts = write_separable(tmp_path)
    assert main(argv("train", data, experts, "--out", str(tmp_path / "router"), "--router", "prompt-knn")) == 0
    capsys.readouterr()
    assert main(["experts", "--library", str(_library(tmp_path, "router")), "--json"]) == 0
    assert [e["categories"] for e in json.loads(capsys.readouterr().out)["experts"]] == [[], [], []]


@pytest.mark.parametrize("sizes", [(1.0, 1.0, 1.0), (1.0, 5.0, 10.0)])
def test_a_library_giving_other_sizes_than_the_trained_router_is_warned_of(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture, sizes: tuple[float, ...]
) -> None:
    # The router chooses with the sizes it was trained at (1, 5, 10 B here), the server counts the library's.
    from coserve.config import load_library
    from coserve.router.router import CoERouter

    data, experts = write_separable(tmp_path)
    assert main(argv("train", data, experts, "--out", str(tmp_path / "router"), "--router", "map-logistic")) == 0
    library = _library(tmp_path, "router")
    text = library.read_text()
    for name, size in zip(("small", "mid", "big"), sizes, strict=True):
        text = text.replace(
            f"{{name: {name}, backend: fake, params_b: 1.0}}", f"{{name: {name}, backend: fake, params_b: {size}}}"
        )
    library.write_text(text)
    with caplog.at_level("WARNING", logger="coserve.router"):
        CoERouter.from_trained(load_library(library))
    warned = [r.getMessage() for r in caplog.records if r.name == "coserve.router"]
    if sizes == (1.0, 5.0, 10.0):  # the sizes it was trained with: nothing to say
        assert warned == []
    else:
        assert len(warned) == 1 and "mid 5 B (library 1 B), big 10 B (library 1 B)" in warned[0]
        assert "small" not in warned[0] and str(library) in warned[0]
