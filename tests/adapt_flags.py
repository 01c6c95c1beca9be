"""``coserve bench adapt`` refusing bad flags: the check the online router's flag tests share."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from coserve.cli import main


def assert_bench_adapt_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cases: Iterable[tuple[list[str], str]]
) -> None:
    """Each ``(flags, says)``: ``coserve bench adapt`` with ``flags`` exits 2 with ``says`` on stderr,
    before reading its inputs (they do not exist) or writing its output."""
    argv = ["bench", "adapt", "--prior", str(tmp_path / "none.jsonl"), "--experts", str(tmp_path / "none.json")]
    argv += ["--budget-params", "3", "--json", str(tmp_path / "x.json")]
    for flags, says in cases:
        assert main([*argv, *flags]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
