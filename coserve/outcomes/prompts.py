"""Prompts of outcome rows written without them, rebuilt from the suites by item id.

An outcome file keeps ``prompt`` only when asked (``coserve outcomes --with-prompts``), and some
committed files drop it on purpose (LeetCode statements are not republished). The suites are
deterministic: an item id is ``<suite>-<row index>``, so the prompt an expert was asked is
``suite.prompt(item)`` again. ``with_prompts`` returns copies of the rows with ``prompt`` filled in
memory; nothing is written back. This module knows nothing about experts, checks or the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coserve.errors import ConfigError
from coserve.outcomes.suites import SUITES, make_suite

__all__ = ["with_prompts"]


def _suite_of(item_id: str) -> str:
    name = item_id.rsplit("-", 1)[0]
    if name not in SUITES:
        raise ConfigError(f"row {item_id!r}: no suite {name!r} to rebuild its prompt from (known: {', '.join(SUITES)})")
    return name


def with_prompts(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows``, each with its ``prompt`` (kept where recorded, else rebuilt from its suite)."""
    missing = {_suite_of(str(row["id"])) for row in rows if not row.get("prompt")}
    items: dict[str, Any] = {}
    prompt_of: dict[str, Any] = {}
    for name in sorted(missing):
        suite = make_suite(name)
        for item in suite.load():
            items[item.id] = item
            prompt_of[item.id] = suite.prompt
    out: list[dict[str, Any]] = []
    for row in rows:
        copy = dict(row)
        if not copy.get("prompt"):
            item_id = str(row["id"])
            if item_id not in items:
                raise ConfigError(f"row {item_id!r}: no such item in the installed suite (a different version?)")
            copy["prompt"] = prompt_of[item_id](items[item_id])
        out.append(copy)
    return out
