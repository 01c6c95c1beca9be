"""End to end, real experts and real suite data: ``coserve outcomes`` on HumanEval (the real sandbox
runs the expert's program) and MT-Bench (a real expert judges), through the real engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from coserve.cli import main
from coserve.config import load_library

pytestmark = pytest.mark.e2e


def _one_expert_library(tmp_path: Path) -> Path:
    """The default library cut down to its smallest expert (a few seconds per item on 2 cores)."""
    default = load_library()
    assert default.path is not None
    data = yaml.safe_load(default.path.read_text())
    data["experts"] = [e for e in data["experts"] if e["name"] == "general"]
    for key in ("outcomes", "priors"):  # the default map is solved for three experts: write this one's
        data["router"].pop(key, None)
    data["router"]["map"] = dict.fromkeys(default.categories, "general")
    data["router"]["fallback"]["expert"] = "general"
    data["categories"] = str(default.path.parent / data["categories"])
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_humaneval_and_mtbench_on_a_real_expert(tmp_path: Path, capsys: Any) -> None:
    library = _one_expert_library(tmp_path)
    out = tmp_path / "o.jsonl"
    common = ["outcomes", "--library", str(library), "--limit", "1", "--out", str(out), "--max-tokens", "96"]
    assert main([*common, "--suite", "humaneval"]) == 0
    assert main([*common, "--suite", "mtbench", "--judge", "general", "--routed"]) == 0
    printed = capsys.readouterr().out
    assert "items written 1" in printed
    code, chat = (json.loads(line) for line in out.read_text().splitlines())
    assert code["id"].startswith("humaneval-") and code["category"] == "code"
    assert code["scores"]["general"] in (0.0, 1.0) and code["tokens"]["general"] > 0
    assert chat["id"].startswith("mtbench-") and chat["judge"] == "general"
    assert chat["routed_expert"] == "general"
    # The 135M judge may not follow the rating format: then the item says so instead of a score.
    for column in ("general", "routed"):
        got = chat["scores"].get(column)
        assert (got is not None and 0.1 <= got <= 1.0) or "no [[rating]]" in chat["errors"][column]
