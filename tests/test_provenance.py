"""Every data file under docs/data records where its figures came from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from coserve.bench.provenance import RUNTIME_ENV, git_commit, provenance, write_data


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_commit_is_dirty_only_when_code_changed(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "coserve").mkdir()
    (tmp_path / "coserve" / "a.py").write_text("x = 1\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "figures.md").write_text("1.0\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")

    assert git_commit(tmp_path) == head
    (tmp_path / "docs" / "figures.md").write_text("2.0\n")  # a run rewriting its own docs
    assert git_commit(tmp_path) == head
    (tmp_path / "coserve" / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"


def test_outside_git_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"


def test_write_data_records_the_run_and_keeps_the_payload(tmp_path: Path) -> None:
    out = write_data(tmp_path / "sub" / "run.json", {"req_s": [1.0, 2.0], "provenance": "stale"}, ["coserve", "bench"])
    body = json.loads(out.read_text())
    assert body["req_s"] == [1.0, 2.0]
    record = body["provenance"]
    assert record["command"] == "coserve bench"
    assert set(record) >= {"commit", "date", "cpu_model", "cpu_count", "usable_cores"}
    assert record["cpu_count"] >= record["usable_cores"] >= 1
    assert provenance("a 'b c'")["command"] == "a 'b c'"


def test_the_runtime_variables_that_are_set_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure taken with another wait policy or thread count says so."""
    for key in RUNTIME_ENV:
        monkeypatch.delenv(key, raising=False)
    assert "env" not in provenance("x")
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    monkeypatch.setenv("PATH", "/bin")
    assert provenance("x")["env"] == {"GOMP_SPINCOUNT": "300000"}


def test_every_data_file_under_docs_records_its_provenance() -> None:
    """The docs quote only files that say how, where and from which commit they were made."""
    files = sorted((Path(__file__).parent.parent / "docs" / "data").glob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text()).get("provenance")
        assert isinstance(record, dict), path.name
        missing = {"command", "commit", "date", "cpu_model"} - set(record)
        assert not missing, f"{path.name} lacks {sorted(missing)}"
