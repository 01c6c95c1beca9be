"""``scripts/figure_audit.py``: provenance, names the docs quote, and files nobody names, on a small
repository made here (each finding written out by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from script_module import load_script

FULL = {"command": "x", "commit": "abc", "date": "2026-01-01", "cpu_model": "AMD EPYC", "cpu_count": 2}


@pytest.fixture(scope="module")
def audit_script() -> ModuleType:
    return load_script("figure_audit")


def _repo(tmp_path: Path, data: dict[str, object], docs: dict[str, str]) -> Path:
    for name, body in data.items():
        path = tmp_path / "docs" / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body if isinstance(body, str) else json.dumps(body))
    for name, text in docs.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_expand_braces(audit_script: ModuleType) -> None:
    assert audit_script.expand_braces("s{1,2}-x{a,b}.json") == ["s1-xa.json", "s1-xb.json", "s2-xa.json", "s2-xb.json"]
    assert audit_script.expand_braces("plain.json") == ["plain.json"]


def test_provenance_findings(audit_script: ModuleType, tmp_path: Path) -> None:
    root = _repo(
        tmp_path,
        {
            "good.json": {"provenance": FULL},
            "none.json": {"value": 1},
            "nocores.json": {"provenance": {k: v for k, v in FULL.items() if k != "cpu_count"}},
            "nodate.json": {"provenance": {**FULL, "date": ""}},
            "old.json": {"provenance": {**FULL, "cpu_model": "not recorded", "recorded_by": "git history"}},
            "oldbare.json": {"provenance": {**FULL, "cpu_model": "not recorded"}},
            "dirty.json": {"provenance": {**FULL, "commit": "abcdef0123-dirty"}},
            "broken.json": "{",
            "rows.jsonl": '{"a": 1}\n',
        },
        {"docs/figures.md": ""},
    )
    findings = audit_script.audit(root)
    broken, *rest = sorted(findings.provenance)
    assert broken.startswith("broken.json: not readable JSON (")  # the parser's own words follow
    assert rest == [
        "nocores.json: provenance lacks cores (cpu_count or usable_cores)",
        "nodate.json: provenance lacks date",
        "none.json: no provenance object",
        "oldbare.json: cpu_model not recorded and no recorded_by/note says why",
    ]
    assert findings.incomplete == ["old.json: cpu_model not recorded"]
    assert findings.dirty == ["dirty.json: commit abcdef0-dirty"]


def test_names_missing_unnamed_and_not_listed(audit_script: ModuleType, tmp_path: Path) -> None:
    figures = (
        "| where | figure | data file | command | status |\n|---|---|---|---|---|\n"
        "| a | 1.5 | seed{1,2}.json, run-*.json | cmd | backed |\n"
        "| b | 2 | gone.json | cmd | backed |\n"
    )
    readme = "See docs/data/quoted.json, docs/data/bench-<commit>.json and docs/data/serve.json.\n"
    root = _repo(
        tmp_path,
        {
            name: {"provenance": FULL}
            for name in ("seed1.json", "seed2.json", "run-a.json", "quoted.json", "orphan.json", "sub/deep.json")
        },
        {"docs/figures.md": figures, "README.md": readme, "docs/other.md": "the deep.json file\n"},
    )
    findings = audit_script.audit(root)
    # seed2.json is named only through the brace list; gone.json is in the inventory but not on disk;
    # bench-<commit> is a placeholder and serve.json a planned output, so neither is missing.
    assert findings.missing == ["gone.json: named in the docs, not in docs/data"]
    assert findings.unnamed == ["orphan.json: in docs/data, named nowhere in README.md or docs/"]
    assert findings.not_listed == [
        "orphan.json: not in the data-file column of docs/figures.md",
        "quoted.json: not in the data-file column of docs/figures.md",
        "sub/deep.json: not in the data-file column of docs/figures.md",
    ]
    assert audit_script.main(["--root", str(root)]) == 1
