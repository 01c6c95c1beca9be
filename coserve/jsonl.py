"""JSON Lines: one JSON object a line, read with the line number of each object.

Outcome files and the decision log export are JSONL. A reader here never drops a
bad line silently: each comes back as the reason it is bad, for the caller to refuse or report
with its file and line. This module knows nothing about what the objects mean.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["Row", "parse_lines", "read_rows", "write_row"]

# (1-based line number, the object) or (line number, why the line is not an object).
Row = tuple[int, dict[str, Any] | str]


def parse_lines(lines: Iterable[str]) -> list[Row]:
    """(line, object) for each non-blank line; a string in place of the object says why it is bad."""
    rows: list[Row] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rows.append((number, f"malformed JSON: {exc.msg}"))
            continue
        rows.append((number, obj if isinstance(obj, dict) else "a line must be a JSON object"))
    return rows


def read_rows(path: Path) -> list[Row]:
    """``parse_lines`` over a UTF-8 file (a byte order mark first is read past, as spreadsheets write it);
    OSError/UnicodeDecodeError for an unreadable file are the caller's."""
    with path.open(encoding="utf-8-sig") as handle:
        return parse_lines(handle)


def write_row(handle: IO[str], obj: dict[str, Any]) -> None:
    """Append one object as one line (UTF-8 text as it is, not escaped)."""
    handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
