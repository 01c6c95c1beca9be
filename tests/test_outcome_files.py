"""A researcher's own outcome exports: the odd-but-valid ones load, each mistake is one clear refusal.

Each case was met by following docs/eval.md with small files made the way exports look (a BOM from a
spreadsheet, a Latin-1 file, sizes written "7B", a file too small for the folds, an expert scored on a
few rows only, ...). A refusal names the file (and the line or field) and leaves no router directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_eval_harness import write_separable

from coserve.cli import main
from coserve.errors import ConfigError
from coserve.eval.data import load_costs, load_expert_scores, load_outcomes


def argv(command: str, data: Path, experts: Path, *extra: str) -> list[str]:
    """``coserve train|eval`` with the hashing embedder (no model to load)."""
    return [command, "--data", str(data), "--experts", str(experts), "--embedder", "hashing", *extra]


def rows(data: Path) -> list[dict]:
    return [json.loads(line) for line in data.read_text().splitlines()]


def write_rows(path: Path, objs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objs), encoding="utf-8")
    return path


def edited_costs(tmp_path: Path, name: str, edit: Callable[[dict], dict]) -> tuple[Path, Path]:
    """The separable data, and its experts file changed by ``edit`` and written as ``name``."""
    data, experts = write_separable(tmp_path)
    path = tmp_path / name
    path.write_text(json.dumps(edit(json.loads(experts.read_text()))))
    return data, path


def trained(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The separable data, its experts file, and the router `coserve train` fits on them."""
    data, experts = write_separable(tmp_path)
    out = tmp_path / "router"
    assert main(argv("train", data, experts, "--out", str(out))) == 0
    return data, experts, out


def refusal_at_serving(tmp_path: Path, router: Path) -> tuple[Path, str]:
    """The library file of three fake experts (small, mid, big) naming ``router``, and why it is refused."""
    import yaml
    from conftest import library_data

    from coserve.config import load_library
    from coserve.router.router import check_trained

    library = library_data()
    library["experts"] = [dict(library["experts"][0], name=name) for name in ("small", "mid", "big")]
    library.pop("categories")
    library["router"] = {"embedder": "hashing", "trained": str(router), "fallback": {"expert": "big"}}
    file = tmp_path / "library.yaml"
    file.write_text(yaml.safe_dump(library, allow_unicode=True))
    with pytest.raises(ConfigError) as info:
        check_trained(load_library(file))
    return file, info.value.message


# ---- encodings -------------------------------------------------------------------------------------


def test_a_byte_order_mark_is_read_past(tmp_path: Path) -> None:
    # Spreadsheets and PowerShell write UTF-8 with a BOM. JSONL was refused ("Unexpected UTF-8 BOM"),
    # a CSV had every row refused as "missing or non-string id" (its first column was "\ufeffid"),
    # experts.json was refused.
    data, experts = write_separable(tmp_path)
    plain, _ = load_outcomes(data)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    assert load_outcomes(bom)[0].ids == plain.ids
    csv_text = "id,prompt,category,score:a,score:b\nr0,hello,chat,1,0\nr1,def f(),code,0,1\n"
    csv_bom = tmp_path / "bom.csv"
    csv_bom.write_bytes(b"\xef\xbb\xbf" + csv_text.encode())
    outcomes, problems = load_outcomes(csv_bom)
    assert outcomes.ids == ("r0", "r1") and problems == []
    experts_bom = tmp_path / "experts-bom.json"
    experts_bom.write_bytes(b"\xef\xbb\xbf" + experts.read_bytes())
    assert load_costs(experts_bom).names == load_costs(experts).names
    scores = tmp_path / "scores.jsonl"
    scores.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "r0", "scores": {"a": 1.0}}).encode() + b"\n")
    assert load_expert_scores(scores, "a") == {"r0": 1.0}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_not_in_utf8_is_refused_naming_its_line(tmp_path: Path, suffix: str) -> None:
    # A Latin-1 (Windows) export was a UnicodeDecodeError traceback.
    path = tmp_path / f"latin1{suffix}"
    if suffix == ".csv":
        path.write_bytes("id,prompt,category,score:a,score:b\nr0,hi,chat,1,0\nr1,qué,code,0,1\n".encode("latin-1"))
        line = 3
    else:
        objs = [{"id": f"r{i}", "prompt": "qué" if i == 2 else "hi", "category": "c"} for i in range(4)]
        path.write_bytes("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode("latin-1"))
        line = 3
    with pytest.raises(ConfigError) as info:
        load_outcomes(path)
    assert info.value.message == f"{path}:{line}: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_a_compressed_file_or_a_folder_is_one_line(tmp_path: Path) -> None:
    import gzip

    data, _ = write_separable(tmp_path)
    packed = tmp_path / "outcomes.jsonl.gz"
    packed.write_bytes(gzip.compress(data.read_bytes()))
    with pytest.raises(ConfigError) as info:
        load_outcomes(packed)
    assert info.value.message == f"{packed}: a gzip-compressed file; decompress it first (gunzip)"
    with pytest.raises(ConfigError) as info:
        load_outcomes(tmp_path)
    assert info.value.message == f"{tmp_path}: cannot read: Is a directory"
    with pytest.raises(ConfigError) as info:
        load_expert_scores(packed, "a")
    assert info.value.message.startswith(f"{packed}: a gzip-compressed file")


# ---- experts.json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"params_b": "7B"}, "b.params_b: not a number: '7B' (billions of parameters, e.g. 7)"),
        ({"params_b": -7}, "b.params_b: -7 is below 0"),
        ({"input_price": -0.1}, "b.input_price: -0.1 is below 0"),
        ({"output_price": float("inf")}, "b.output_price: inf is not finite"),
        ({"params": 7}, "b.params: unknown key (known: params_b, input_price, output_price)"),
    ],
)
def test_a_bad_cost_names_the_file_the_expert_and_the_field(tmp_path: Path, spec: dict, message: str) -> None:
    # Negative sizes and prices were taken (a negative size wins every category as the cheapest);
    # a mistyped key was ignored, so the expert's size became null and training moved to the price
    # axis without a word.
    path = tmp_path / "experts.json"
    costs = {"a": {"params_b": 1, "input_price": 0.1, "output_price": 0.1}}
    costs["b"] = {"params_b": 7, "input_price": 0.2, "output_price": 0.2, **spec}
    path.write_text(json.dumps(costs))
    with pytest.raises(ConfigError) as info:
        load_costs(path)
    assert info.value.message == f"{path}: {message}"


def test_experts_missing_from_either_file_are_named(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the data scores "big", the experts file lacks it: refused, naming the experts file
    data, lacking = edited_costs(tmp_path, "lacking.json", lambda costs: {k: v for k, v in costs.items() if k != "big"})
    costs = json.loads((tmp_path / "experts.json").read_text())
    out = tmp_path / "router"
    assert main(argv("train", data, lacking, "--out", str(out))) == 2
    assert capsys.readouterr().err == f"coserve: error: {lacking}: no entry for ['big'], which {data} scores\n"
    assert not out.exists()
    # the experts file lists one the data does not score: trained without it, and said so
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**costs, "ghost": {"params_b": 3, "input_price": 1, "output_price": 1}}))
    assert main(argv("train", data, extra, "--out", str(out))) == 0
    assert f"coserve: note: {extra} lists ['ghost'], which {data} does not score: left out\n" in capsys.readouterr().err


# ---- rows ------------------------------------------------------------------------------------------


def test_a_duplicate_id_names_the_line_of_the_first(tmp_path: Path) -> None:
    data, _ = write_separable(tmp_path)
    objs = rows(data)
    again = dict(objs[4], scores={k: 1 - v for k, v in objs[4]["scores"].items()})
    path = write_rows(tmp_path / "dup.jsonl", [*objs, again])
    _, problems = load_outcomes(path, on_bad="skip")
    assert [(p.line, p.reason) for p in problems] == [(len(objs) + 1, "duplicate id (first on line 5)")]


def test_an_expert_scored_on_a_few_rows_is_summed_up(tmp_path: Path) -> None:
    # One row scoring an extra expert made every other row "missing scores for experts ['extra']":
    # 59 rows listed, and --on-bad skip would have kept the one row.
    data, _ = write_separable(tmp_path)
    objs = rows(data)
    objs[6]["scores"]["extra"] = 0.5
    path = write_rows(tmp_path / "extra.jsonl", objs)
    with pytest.raises(ConfigError) as info:
        load_outcomes(path)
    assert info.value.message.splitlines()[-2:] == [
        "'extra' is scored on 1 of 60 rows (first on line 7): score it on every row, or leave it out of the file",
        "drop them with on_bad='skip' (on the command line: --on-bad skip)",
    ]


# ---- too small, one category -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "n", "message"),
    [
        (
            "train",
            3,
            "3 distinct prompts; a router is tuned on 5 grouped folds of the rows it is fitted on and needs 5 or more",
        ),
        (
            "eval",
            6,
            "6 distinct prompts are too few for 5 folds: the training part of each fold needs 5 distinct "
            "prompts (the smallest has 4); use fewer --folds or more rows",
        ),
        (
            "eval",
            3,
            "3 distinct prompts are too few for 5 folds: each fold needs one at least; use fewer --folds or more rows",
        ),
    ],
)
def test_a_file_too_small_for_the_folds_is_refused_naming_it(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], command: str, n: int, message: str
) -> None:
    # "cannot make 5 folds from 4 distinct prompts" came from an inner split of a file of 6 prompts,
    # with no file named; train said "5 folds" though it was asked for none.
    data, experts = write_separable(tmp_path, n=n)
    out = tmp_path / "written"
    assert main(argv(command, data, experts, "--out" if command == "train" else "--json", str(out))) == 2
    assert capsys.readouterr().err == f"coserve: error: {data}: {message}\n"
    assert not out.exists() and not (cache / "embeddings").exists()


def test_one_category_is_refused_for_a_classifier_and_trained_per_prompt(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, experts = write_separable(tmp_path)
    path = write_rows(tmp_path / "one.jsonl", [dict(obj, category="all") for obj in rows(data)])
    out = tmp_path / "router"
    assert main(argv("train", path, experts, "--out", str(out))) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: {path}: one category ('all'); a stack router classifies prompts into categories "
        "and needs two or more: add categories, or train a per-prompt router (--router prompt-knn)\n"
    )
    assert not out.exists()
    assert main(argv("train", path, experts, "--out", str(out), "--router", "prompt-knn")) == 0


# ---- the router directory --------------------------------------------------------------------------


def test_retraining_replaces_the_whole_router_directory(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Retraining into a router's directory on data too small to calibrate left the first training's
    # calibration.npz beside the new router, which a server would have read as the new one's.
    _, experts, out = trained(tmp_path)
    assert (out / "calibration.npz").exists()
    capsys.readouterr()
    (tmp_path / "small").mkdir()
    small, _ = write_separable(tmp_path / "small", n=6)
    assert main(argv("train", small, experts, "--out", str(out))) == 0
    assert sorted(p.name for p in out.iterdir()) == ["arrays.npz", "manifest.json"]
    # why not, naming the file (was "cannot make 5 folds from 4 distinct prompts" for a file of 6)
    err = capsys.readouterr().err.splitlines()
    assert (
        f"coserve: no calibration file for router.online's change detector: {small}: 6 distinct prompts are too "
        "few for 5 folds: the training part of each fold needs 5 distinct prompts (the smallest has 4); "
        "give more rows" in err
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_a_failed_training_leaves_the_old_router_and_a_foreign_folder_is_refused(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, experts, out = trained(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv("train", data, experts, "--out", str(out), "--router", "map-nosuch")) == 2
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    assert main(argv("train", data, experts, "--out", str(foreign))) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: --out {foreign}: a folder that holds no trained router (no manifest.json); "
        "name a new folder or a router's\n"
    )
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]


# ---- experts add -----------------------------------------------------------------------------------


def test_experts_add_says_which_categories_it_had_no_scores_for(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An added expert scored on the code prompts only was given its overall mean on chat, unsaid.
    data, experts = write_separable(tmp_path)
    out = tmp_path / "router"
    assert main(argv("train", data, experts, "--out", str(out), "--router", "map-logistic")) == 0
    capsys.readouterr()
    code = [obj["id"] for obj in rows(data) if obj["category"] == "code"]
    scores = write_rows(tmp_path / "coder.jsonl", [{"id": i, "scores": {"coder": 1.0}} for i in code])
    argv_add = ["experts", "add", "--router", str(out), "--name", "coder", "--outcomes", str(scores)]
    assert main([*argv_add, "--params-b", "2"]) == 0
    printed = capsys.readouterr().out
    assert "scored prompts per category: chat 0/30, code 30/30" in printed
    assert "no scores in chat: its mean over the prompts it is scored on (1.000) stands in" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["map"]["code"] == "coder" and manifest["experts"][-1]["name"] == "coder"


@pytest.mark.parametrize("text", ["id,prompt,category,score:a\nr0,hi,chat,1\n", '[{"id": "r0"}, {"id": "r1"}]\n'])
def test_a_file_with_no_json_object_says_what_jsonl_is(tmp_path: Path, text: str) -> None:
    # A CSV named .jsonl, or a JSON array, listed every line as "malformed JSON" and advised skipping them.
    path = tmp_path / "export.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_outcomes(path)
    assert info.value.message.splitlines()[-1] == (
        "no line is a JSON object: JSON Lines has one object a line; a CSV file must be named .csv"
    )


def test_bench_adapt_on_a_prior_too_small_names_it(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "cannot make 5 folds from 4 distinct prompts", after embedding, naming no file.
    data, experts = write_separable(tmp_path, n=10)
    out = tmp_path / "adapt.json"
    argv_adapt = ["bench", "adapt", "--prior", str(data), "--experts", str(experts), "--budget-params", "3"]
    assert main([*argv_adapt, "--json", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: {data} (the half the router is fitted on): 4 distinct prompts are too few for 5 folds: "
        "each fold needs one at least; give more rows\n"
    )
    assert not out.exists() and not (cache / "embeddings").exists()


def test_a_test_file_without_an_expert_of_the_training_data_is_summed_up(tmp_path: Path) -> None:
    data, _ = write_separable(tmp_path)
    objs = rows(data)
    for obj in objs:
        del obj["scores"]["big"]
    path = write_rows(tmp_path / "test.jsonl", objs)
    with pytest.raises(ConfigError) as info:
        load_outcomes(path, experts=["small", "mid", "big"])
    assert info.value.message.splitlines()[-2] == "'big' is scored on 0 of 60 rows"


def test_the_eval_report_has_the_keys_docs_eval_md_lists(tmp_path: Path, cache: Path) -> None:
    # docs/eval.md's "Report schema" lacked meta.embedders and provenance, and named a
    # provenance.wall_seconds that `coserve eval` did not write.
    data, experts = write_separable(tmp_path)
    report = tmp_path / "r.json"
    assert (
        main(argv("eval", data, experts, "--folds", "3", "--json", str(report), "--routers", "stack,map-logistic")) == 0
    )
    body = json.loads(report.read_text())
    assert set(body) == {"routers", "baselines", "meta", "provenance"}
    meta = {"n_train", "n_eval", "experts", "categories", "mode", "folds", "seed", "embedder", "cost_axes"}
    meta |= {"primary_axis", "strong_expert", "hybrid", "not_run", "data", "test", "skipped_rows", "intervals"}
    meta |= {"reference"}
    assert set(body["meta"]) == meta  # "embedders" too when no --embedder is given (each router's own)
    provenance = {"command", "commit", "date", "cpu_model", "cpu_count", "usable_cores", "python", "wall_seconds"}
    assert provenance <= set(body["provenance"]) and body["provenance"]["wall_seconds"] > 0
    point = {"axis", "budget", "quality", "avg_params_b", "avg_price", "lam", "strong_fraction"}
    point |= {"quality_interval_95", "best_single", "best_single_affordable"}
    metrics = {"auc_params", "auc_price", "cost_axis", "quality_at_best_single_budget"}
    metrics |= {"min_budget_for_best_single_quality", "min_budget_ratio_to_best_single", "oracle_gap_closed"}
    metrics |= {"category_accuracy", "ece", "ece_calibrated", "temperature", "alpha", "min_confidence"}
    metrics |= {"ood_threshold", "fallback_rate", "apgr", "cpt50", "cpt80", "cpt95"}
    metrics |= {"quality_at_best_single_budget_interval_95", "margin_at_best_single_budget"}
    metrics |= {"summary_intervals_95", "summary_undefined_resamples", "difference_from_reference"}
    for entry in body["routers"].values():
        assert set(entry) == {"points", "metrics"} and set(entry["metrics"]) <= metrics
        assert all(set(p) <= point for p in entry["points"])
    assert all(set(b) == {"quality", "avg_params_b", "avg_price"} for b in body["baselines"].values())


def test_an_expert_without_the_budgets_cost_is_named_before_embedding(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "the experts file lacks price for some experts; choose the other budget axis", after embedding,
    # naming neither the file nor the expert, and advising the other axis when it was missing too.
    data, no_price = edited_costs(tmp_path, "no-price.json", lambda costs: {**costs, "mid": {"params_b": 5.0}})
    costs = json.loads((tmp_path / "experts.json").read_text())
    out = tmp_path / "router"
    assert main(argv("train", data, no_price, "--out", str(out), "--budget-price", "1")) == 2
    err = capsys.readouterr().err
    why = "no input_price and output_price for ['mid']: budget on params (--budget-params)"
    assert err == f"coserve: error: {no_price}: {why}\n"
    nothing = tmp_path / "nothing.json"
    nothing.write_text(json.dumps({**costs, "mid": {"params_b": None}}))
    for command in (["train", "--out", str(out)], ["eval", "--json", str(tmp_path / "r.json")]):
        assert main(argv(command[0], data, nothing, *command[1:])) == 2
        err = capsys.readouterr().err
        why = (
            "no params_b for ['mid'] and no prices for ['mid']: give every expert params_b, or every expert both prices"
        )
        assert err == f"coserve: error: {nothing}: {why}\n"
    assert not out.exists() and not (cache / "embeddings").exists()


def test_a_router_kind_train_does_not_fit_is_refused_before_embedding(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # top2 (eval only) and a mistyped kind were refused after every prompt had been embedded.
    data, experts = write_separable(tmp_path)
    out = tmp_path / "router"
    for kind in ("top2", "map-logistc"):
        assert main(argv("train", data, experts, "--out", str(out), "--router", kind)) == 2
        assert capsys.readouterr().err == (
            f"coserve: error: --router {kind}: not a router train fits; one of map-knn, map-logistic, map-mlp, "
            "prompt-knn, prompt-mf, prompt-mlp, prompt-ridge, hybrid, stack\n"
        )
    assert not out.exists() and not (cache / "embeddings").exists()


def test_names_a_library_cannot_serve_are_noted_at_training_and_refused_at_serving(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A category named in Chinese was trained and served: every request routed to it was a 500 (the
    # name travels in the x-coserve-category header), after the expert had answered.
    data, experts = write_separable(tmp_path)
    names = {"code": "编程", "chat": "chat"}
    path = write_rows(tmp_path / "named.jsonl", [dict(obj, category=names[obj["category"]]) for obj in rows(data)])
    out = tmp_path / "router"
    assert main(argv("train", path, experts, "--out", str(out))) == 0
    rule = "use 1 to 64 ASCII letters, digits, '_', '.', ':' or '-', the first a letter or digit"
    assert (
        f"coserve: note: {path}: '编程' is not a valid category name: {rule}; a server refuses this router "
        "until it is renamed\n" in capsys.readouterr().err
    )
    file, message = refusal_at_serving(tmp_path, out)
    assert message == (
        f"{file}: router.trained: {out}: '编程' is not a valid category name: {rule}; retrain with it renamed"
    )


def test_an_expert_name_no_library_can_hold_is_said_at_serving(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Hugging Face id as the expert's name ("org/model", as in RouteLLM's exports): the server said
    # only that the library lacks it, and a library cannot name it.
    data, experts = write_separable(tmp_path)
    renamed = [
        dict(obj, scores={("org/big" if k == "big" else k): v for k, v in obj["scores"].items()}) for obj in rows(data)
    ]
    path = write_rows(tmp_path / "hf.jsonl", renamed)
    costs = json.loads(experts.read_text())
    costs["org/big"] = costs.pop("big")
    experts.write_text(json.dumps(costs))
    out = tmp_path / "router"
    assert main(argv("train", path, experts, "--out", str(out))) == 0
    assert "'org/big' is not a valid expert name" in capsys.readouterr().err
    file, message = refusal_at_serving(tmp_path, out)
    assert message.startswith(f"{file}: router.trained: {out}: 'org/big' is not a valid expert name: use ")


def test_integer_ids_are_read_as_their_decimal_strings(tmp_path: Path) -> None:
    # pandas writes an integer index as {"id": 17}: every row was "missing or non-string id".
    data, _ = write_separable(tmp_path)
    objs = [dict(obj, id=int(obj["id"][1:])) for obj in rows(data)]
    path = write_rows(tmp_path / "ints.jsonl", objs)
    outcomes, problems = load_outcomes(path)
    assert problems == [] and outcomes.ids[:3] == ("0", "1", "2")
    scores = write_rows(tmp_path / "scores.jsonl", [{"id": 1, "scores": {"a": 0.5}}, {"id": True, "scores": {"a": 1}}])
    with pytest.raises(ConfigError) as info:  # true is no id
        load_expert_scores(scores, "a")
    assert info.value.message.splitlines()[1].startswith(f"  {scores}:2: ?:")


def test_a_free_expert_is_a_cost_of_zero_in_eval(tmp_path: Path, cache: Path) -> None:
    # A price of 0 (a self-hosted model) dropped the price axis: with no sizes, eval said "the experts
    # file gives neither params_b nor prices for every expert" (train took the same file).
    def free_big(costs: dict) -> dict:
        costs = {name: dict(spec, params_b=None) for name, spec in costs.items()}
        costs["big"].update(input_price=0, output_price=0)
        return costs

    data, experts = edited_costs(tmp_path, "free.json", free_big)
    report = tmp_path / "r.json"
    assert main(argv("eval", data, experts, "--folds", "3", "--json", str(report), "--routers", "map-logistic")) == 0
    body = json.loads(report.read_text())
    assert body["meta"]["primary_axis"] == "price" and body["baselines"]["big"]["avg_price"] == 0
    # the best single expert (big) is free: no ratio to its cost
    assert body["routers"]["map-logistic"]["metrics"]["min_budget_ratio_to_best_single"] is None


def test_retraining_through_a_link_replaces_the_router_it_names(tmp_path: Path, cache: Path) -> None:
    data, experts, out = trained(tmp_path)
    link = tmp_path / "current"
    link.symlink_to(out)
    assert main(argv("train", data, experts, "--out", str(link), "--router", "map-logistic")) == 0
    assert link.is_symlink() and json.loads((out / "manifest.json").read_text())["kind"] == "map-logistic"


def test_a_csv_cell_over_the_field_limit_names_its_line(tmp_path: Path) -> None:
    # csv.Error was a traceback.
    path = tmp_path / "long.csv"
    path.write_text("id,prompt,category,score:a,score:b\nr0,hi,chat,1,0\nr1," + "x" * 200_000 + ",code,0,1\n")
    with pytest.raises(ConfigError) as info:
        load_outcomes(path)
    assert info.value.message == f"{path}:3: field larger than field limit (131072); a JSONL file has no such limit"
