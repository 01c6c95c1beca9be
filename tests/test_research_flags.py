"""The researcher's commands (eval, train-check, outcomes, bench route): out-of-range flags are refused
by the parser in one line naming the flag, before any data is read or any file is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from coserve.cli import main

DATA = ["--data", "none.jsonl", "--experts", "none.json"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # --folds 1 was "cannot make 1 folds from 60 distinct prompts", as if the data were too small
        (["eval", *DATA, "--json", "r.json", "--folds", "1"], "argument --folds: 1 is too small: give 2 or more"),
        (["eval", *DATA, "--json", "r.json", "--jobs", "0"], "argument --jobs: 0 is too small: give 1 or more"),
        (["eval", *DATA, "--json", "r.json", "--jobs", "-3"], "argument --jobs: -3 is too small: give 1 or more"),
        (["eval", *DATA, "--json", "r.json", "--folds", "two"], "argument --folds: 'two' is not a whole number"),
        # train-check --folds 1 said "the check needs both good and bad answers in its training data"
        (
            ["train-check", "--data", "x.jsonl", "--out", "c.json", "--folds", "1"],
            "argument --folds: 1 is too small: give 2 or more",
        ),
        (["train-check", "--data", "x.jsonl", "--out", "c.json", "--good", "2"], "argument --good: 2 is not in [0, 1]"),
        (
            ["train-check", "--data", "x.jsonl", "--out", "c.json", "--max-steps", "0"],
            "argument --max-steps: 0 is too small: give 1 or more",
        ),
        # bench route --n 0 was an IndexError traceback from the warm-up decision
        (["bench", "route", "--n", "0"], "argument --n: 0 is too small: give 1 or more"),
        (["bench", "route", "--blas-threads", "-1"], "argument --blas-threads: -1 is too small: give 0 or more"),
        # outcomes ran with --concurrency 0 and --max-tokens -1
        (
            ["outcomes", "--suite", "mmlu", "--out", "o.jsonl", "--concurrency", "0"],
            "argument --concurrency: 0 is too small: give 1 or more",
        ),
        (
            ["outcomes", "--suite", "mmlu", "--out", "o.jsonl", "--max-tokens", "-1"],
            "argument --max-tokens: -1 is too small: give 1 or more",
        ),
    ],
)
def test_out_of_range_research_flags_stop_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    prog = "coserve bench route" if argv[0] == "bench" else f"coserve {argv[0]}"
    assert capsys.readouterr().err.splitlines()[-1] == f"{prog}: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_outcomes_refuses_an_exclude_file_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A mistyped --exclude was read as "nothing to exclude": the held-out run drew the check's items again.
    missing = tmp_path / "train.jsonl"
    out = tmp_path / "heldout.jsonl"
    argv = ["outcomes", "--suite", "mmlu", "--limit", "1", "--exclude", str(missing), "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"coserve: error: --exclude {missing}: no such outcome file\n"
    assert not out.exists()


def test_an_exclude_file_is_read_not_repaired(tmp_path: Path) -> None:
    # --exclude read its file with the resume reader, which cut a partial last line off the file: an input
    # (perhaps another run's output being written) was changed by the run that only excluded its ids.
    from coserve.outcomes.runner import done_ids

    held = tmp_path / "train.jsonl"
    text = '{"id": "mmlu-1", "scores": {}}\n{"id": "mmlu-2", "scores": {}}\n{"id": "mmlu-3", "sc'
    held.write_text(text)
    assert done_ids(held, repair=False) == {"mmlu-1", "mmlu-2"}
    assert held.read_text() == text
    assert done_ids(held) == {"mmlu-1", "mmlu-2"}  # the --out file of a resumed run is repaired
    assert held.read_text() == text[: text.rindex("\n") + 1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # matplotlib's ValueError traceback came after the whole evaluation, the report already written
        (["--json", "{t}/r.json", "--plot", "{t}/plot.txt"], "--plot {t}/plot.txt: give a .png, .svg, .pdf file"),
        (["--json", "{t}/afile/r.json"], "--json {t}/afile/r.json: {t}/afile is not a folder"),
        (
            ["--json", "{t}/r.json", "--plot", "{t}/afile/x/p.png"],
            "--plot {t}/afile/x/p.png: {t}/afile is not a folder",
        ),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    given = [flag.format(t=tmp_path) for flag in flags]
    adapt = ["bench", "adapt", "--prior", "p.jsonl", "--experts", "e.json", "--budget-price", "5"]
    for command in (["eval", *DATA], adapt):
        assert main([*command, *given]) == 2
        assert capsys.readouterr().err == f"coserve: error: {message.format(t=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_expert_without_costs_is_refused_before_anything_is_embedded(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # eval, train and bench adapt embedded every prompt (MiniLM: minutes on llmrouter) before saying so.
    from test_eval_harness import write_separable

    data, _ = write_separable(tmp_path)
    experts = tmp_path / "two.json"
    experts.write_text('{"small": {"params_b": 1}, "big": {"params_b": 10}}')
    adapt = ["bench", "adapt", "--prior", str(data), "--experts", str(experts), "--budget-params", "3"]
    for argv in (
        ["eval", "--data", str(data), "--experts", str(experts), "--json", str(tmp_path / "r.json")],
        ["train", "--data", str(data), "--experts", str(experts), "--out", str(tmp_path / "router")],
        [*adapt, "--json", str(tmp_path / "a.json")],
    ):
        assert main(argv) == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"coserve: error: {experts}: no entry for ['mid'], which {data} scores"
        )
    assert not (cache / "embeddings").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "experts.json", "outcomes.jsonl", "two.json"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"id": "mmlu-1"}\nnot json\n', "2: malformed JSON: Expecting value"),
        (b'{"id": "mmlu-1"}\n{"scores": {}}\n', "2: a line must be an object with a string id"),
        (b'{"id": "mmlu-1"}\n\xff\xfe\n', " is not UTF-8 text (invalid start byte at byte 17)"),  # was a traceback
    ],
)
def test_a_malformed_exclude_file_is_not_offered_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: bytes, problem: str
) -> None:
    # The resume reader's advice, "fix or move the file to resume", was shown for an --exclude file too.
    held = tmp_path / "train.jsonl"
    held.write_bytes(text)
    out = tmp_path / "heldout.jsonl"
    argv = ["outcomes", "--suite", "mmlu", "--limit", "1", "--exclude", str(held), "--out", str(out)]
    assert main(argv) == 2
    where = f"{held}:" if problem[0].isdigit() else str(held)
    assert capsys.readouterr().err == (
        f"coserve: error: --exclude {where}{problem}; fix the file: its ids are the items this run leaves out\n"
    )
    assert held.read_bytes() == text and not out.exists()


def test_a_malformed_out_file_is_fixed_or_moved_to_resume(tmp_path: Path) -> None:
    from coserve.errors import ConfigError
    from coserve.outcomes.runner import done_ids

    out = tmp_path / "heldout.jsonl"
    out.write_text('{"id": "mmlu-1"}\nnot json\n')
    with pytest.raises(ConfigError) as caught:
        done_ids(out)
    assert caught.value.message == f"{out}:2: malformed JSON: Expecting value; fix or move the file to resume"
