#!/usr/bin/env python
"""The mechanical part of the figure audit: docs/data/ against the docs that quote it.

    .venv/bin/python scripts/figure_audit.py            # prints the findings; exit 1 if any

Three checks, each a list of findings:

- ``provenance``: every ``docs/data/**/*.json`` has a ``provenance`` object with command, commit, date,
  CPU model and cores (``cpu_count`` or ``usable_cores``). A field that says "not recorded" (a file
  that predates the rule, its provenance added later from git history) is reported apart, as
  ``incomplete``, and is not a failure when the file says so in a ``recorded_by`` or ``note`` field.
  A commit ending ``-dirty`` (the code differed from the commit when the run was made) is reported as
  ``dirty``, never a failure: the file cannot be made again now.
- ``missing``: every data file the docs name (``docs/data/NAME`` anywhere in README.md or docs/*.md, and
  every name in the data-file column of docs/figures.md) exists. Brace lists (``seed{1,2}``) are
  expanded; names with ``*`` must match at least one file; placeholders (``<commit>``, ``NAME``) are
  skipped. ``PLANNED`` lists outputs of recipes the docs describe but did not run.
- ``unnamed``: every file under docs/data/ is named somewhere in README.md or docs/*.md (its name, its
  path, or a glob that matches it).
- ``not_listed``: every file under docs/data/ is in the inventory, the data-file column of
  docs/figures.md (by name, brace list or glob).

It reads files only; it does not know whether a number in the docs equals the number in its file
(that part of the audit is by hand: docs/decisions.md, "Figure audit (session 13, branch figaudit13)").
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_SUFFIXES = (".json", ".jsonl")
REQUIRED = ("command", "commit", "date", "cpu_model")
CORES = ("cpu_count", "usable_cores")
NOT_RECORDED = "not recorded"
# Outputs of recipes the docs describe but did not run (the name, and where the docs say so).
PLANNED = {
    "cascade11-heldout.jsonl": "docs/outcomes.md: the held-out run of the gate recipe was not made",
    "serve.json": "docs/figures.md: the default output name of a future serve run",
}
_DATA_PATH = re.compile(r"docs/data/([A-Za-z0-9_.{},*<>/-]+)")
_PLACEHOLDER = re.compile(r"<[^>]*>|NAME|OUT")


class Findings:
    """What the audit found, one line per problem, by check (a plain class: the tests load this
    script as a module outside ``sys.modules``, where a dataclass cannot resolve its annotations)."""

    def __init__(self) -> None:
        self.provenance: list[str] = []
        self.incomplete: list[str] = []
        self.dirty: list[str] = []
        self.missing: list[str] = []
        self.unnamed: list[str] = []
        self.not_listed: list[str] = []

    def failures(self) -> list[str]:
        return self.provenance + self.missing + self.unnamed + self.not_listed


def expand_braces(name: str) -> list[str]:
    """``a{1,2}b`` -> ``a1b``, ``a2b`` (nested lists too); a name without braces is itself."""
    match = re.search(r"\{([^{}]*)\}", name)
    if match is None:
        return [name]
    head, tail = name[: match.start()], name[match.end() :]
    return [expanded for part in match.group(1).split(",") for expanded in expand_braces(head + part + tail)]


def _clean(name: str) -> str:
    return name.rstrip(".,;:)`'\"")


def named_in_text(text: str) -> set[str]:
    """The docs/data names (relative to docs/data/, braces expanded) a text mentions by path."""
    names: set[str] = set()
    for raw in _DATA_PATH.findall(text):
        names.update(expand_braces(_clean(raw)))
    return names


def figures_column(text: str) -> set[str]:
    """The names in the data-file column (the third) of figures.md's tables, braces expanded."""
    names: set[str] = set()
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] in ("where", "---"):
            continue
        for token in re.findall(r"[A-Za-z0-9_.{},*<>/-]+\.jsonl?\b", cells[2]):
            names.update(expand_braces(_clean(token)))
    return names


def data_files(data_dir: Path) -> list[str]:
    """Every data file under ``data_dir``, relative to it."""
    return sorted(
        path.relative_to(data_dir).as_posix()
        for path in data_dir.rglob("*")
        if path.is_file() and path.suffix in DATA_SUFFIXES
    )


def check_provenance(data_dir: Path, findings: Findings) -> None:
    for name in data_files(data_dir):
        if not name.endswith(".json"):
            continue  # a .jsonl holds rows; its provenance is in the .json that names it
        try:
            body = json.loads((data_dir / name).read_text())
        except (OSError, ValueError) as err:
            findings.provenance.append(f"{name}: not readable JSON ({err})")
            continue
        record = body.get("provenance") if isinstance(body, dict) else None
        if not isinstance(record, dict):
            findings.provenance.append(f"{name}: no provenance object")
            continue
        absent = [key for key in REQUIRED if not record.get(key)]
        if not any(record.get(key) for key in CORES):
            absent.append("cores (cpu_count or usable_cores)")
        if absent:
            findings.provenance.append(f"{name}: provenance lacks {', '.join(absent)}")
            continue
        unrecorded = [key for key in (*REQUIRED, *CORES) if str(record.get(key, "")).startswith(NOT_RECORDED)]
        if unrecorded:
            explained = bool(record.get("recorded_by") or record.get("note") or body.get("note"))
            line = f"{name}: {', '.join(unrecorded)} not recorded"
            (findings.incomplete if explained else findings.provenance).append(
                line + ("" if explained else " and no recorded_by/note says why")
            )
        if str(record.get("commit", "")).endswith("-dirty"):
            findings.dirty.append(f"{name}: commit {record['commit'][:7]}-dirty")


def check_names(docs: dict[str, str], data_dir: Path, findings: Findings) -> None:
    present = data_files(data_dir)
    quoted: set[str] = set()
    for doc, text in docs.items():
        quoted |= named_in_text(text)
        if doc.endswith("figures.md"):
            quoted |= figures_column(text)
    for name in sorted(quoted):
        if _PLACEHOLDER.search(name) or name.endswith("/") or not name.endswith(DATA_SUFFIXES):
            continue
        if name in PLANNED:
            continue
        matches = fnmatch.filter(present, name) or fnmatch.filter(present, f"*/{name}")
        if not matches:
            findings.missing.append(f"{name}: named in the docs, not in docs/data")
    everything = "\n".join(docs.values())
    patterns = {name for name in quoted if "*" in name}
    inventory = next((figures_column(text) for doc, text in docs.items() if doc.endswith("figures.md")), set())
    for name in present:
        base = name.rsplit("/", 1)[-1]
        if not (base in everything or name in quoted or base in quoted or _matches(name, patterns)):
            findings.unnamed.append(f"{name}: in docs/data, named nowhere in README.md or docs/")
        if not (name in inventory or base in inventory or _matches(name, inventory)):
            findings.not_listed.append(f"{name}: not in the data-file column of docs/figures.md")


def _matches(name: str, patterns: set[str]) -> bool:
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(base, pattern) for pattern in patterns)


def audit(root: Path) -> Findings:
    """Run the three checks on the repository at ``root``."""
    docs = {path.relative_to(root).as_posix(): path.read_text() for path in [root / "README.md"] if path.exists()}
    docs |= {path.relative_to(root).as_posix(): path.read_text() for path in sorted((root / "docs").glob("*.md"))}
    findings = Findings()
    check_provenance(root / "docs" / "data", findings)
    check_names(docs, root / "docs" / "data", findings)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    findings = audit(args.root)
    for title, lines in (
        ("provenance (failures)", findings.provenance),
        ("incomplete provenance, explained in the file", findings.incomplete),
        ("run on a dirty tree (reported, not a failure)", findings.dirty),
        ("named in the docs, missing (failures)", findings.missing),
        ("in docs/data, named nowhere (failures)", findings.unnamed),
        ("in docs/data, not in docs/figures.md (failures)", findings.not_listed),
    ):
        print(f"{title}: {len(lines)}")
        for line in lines:
            print(f"  {line}")
    return 1 if findings.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
