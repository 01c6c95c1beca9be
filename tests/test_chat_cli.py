"""`coserve chat`: a terminal conversation through the router that shows which expert answered."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import write_library

from coserve.cli import main


def test_chat_shows_the_expert_for_each_turn(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    library = write_library(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("write a python function to sort a list\nhello friend\n/quit\n"))
    assert main(["chat", "--library", str(library), "--max-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "[coder · code" in out and "coder says:" in out
    assert "[small · chat" in out and "small says:" in out


def test_chat_reports_errors_and_goes_on(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    library = write_library(tmp_path, options={"coder": {"fail_generate": True}})
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n/reset\nhello friend\n"))  # Ctrl-D ends it
    assert main(["chat", "--library", str(library), "--model", "coder", "--max-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("error: expert 'coder' failed") == 2
