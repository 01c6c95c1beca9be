"""``coserve init``: an editable copy of the default library that loads and routes as the bundled one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coserve.cli import main
from coserve.config import load_library

FILES = {"lib.yaml", "categories.yaml", "default-outcomes.jsonl"}
PROMPT = "Write a python function that reverses a list"


def test_init_writes_a_library_that_routes_like_the_bundled_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine" / "lib"  # made, parents too
    assert main(["init", str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} == FILES
    assert "coserve serve --library" in capsys.readouterr().out
    copy, bundled = load_library(folder / "lib.yaml"), load_library()
    assert [e.name for e in copy.experts] == [e.name for e in bundled.experts]
    assert set(copy.categories) == set(bundled.categories)
    answers = []
    for library in (str(folder / "lib.yaml"), None):
        argv = ["route", "--json", PROMPT] + (["--library", library] if library else [])
        assert main(argv) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0]["expert"] == answers[1]["expert"] and answers[0]["category"] == answers[1]["category"]


def test_init_never_overwrites_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path)]) == 0
    edited = tmp_path / "lib.yaml"
    edited.write_text(edited.read_text(encoding="utf-8") + "# mine\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coserve: error: ") and "already there (--force overwrites)" in err
    assert edited.read_text(encoding="utf-8").endswith("# mine\n")  # nothing lost
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert not edited.read_text(encoding="utf-8").endswith("# mine\n")


def test_init_refuses_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "f"
    target.write_text("x", encoding="utf-8")
    assert main(["init", str(target)]) == 2
    assert capsys.readouterr().err == f"coserve: error: {target} is a file, not a folder\n"


def test_init_into_a_folder_it_cannot_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder that cannot be made (here: below a file, which fails for root too) is one line, no traceback."""
    (tmp_path / "f").write_text("x", encoding="utf-8")
    target = tmp_path / "f" / "sub"
    assert main(["init", str(target)]) == 1
    assert capsys.readouterr().err == f"coserve: error: Not a directory: {target}\n"
    assert (tmp_path / "f").read_text(encoding="utf-8") == "x"
