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


def test_chat_without_max_tokens_keeps_the_experts_own_cap(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/library.md: options.max_tokens is the cap when a request names none; chat named 256 always.
    library = write_library(tmp_path, options={"small": {"max_tokens": 3}})
    monkeypatch.setattr("sys.stdin", io.StringIO("hello friend\n"))
    assert main(["chat", "--library", str(library), "--model", "small"]) == 0
    assert "you> [small] small says: hello\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-tokens", "0"], "--max-tokens 0: max_tokens must be between 1 and 8192"),
        (["--max-tokens", "9000"], "--max-tokens 9000: max_tokens must be between 1 and 8192"),
        (["--temperature", "3"], "--temperature 3.0: temperature must be between 0 and 2"),
    ],
)
def test_chat_refuses_sampling_flags_the_api_refuses(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    library = write_library(tmp_path)
    assert main(["chat", "--library", str(library), *flags]) == 2
    assert capsys.readouterr().err == f"coserve: error: {message}\n"
